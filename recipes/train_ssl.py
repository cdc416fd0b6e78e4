"""NeMo-style Hydra entry point for nemo_sew pre-training recipes (the same ``train`` as train_ctc.py:
the model class comes from ``model.target``).

    python recipes/train_ssl.py --config-path . --config-name ssl_tiny_mel model.train_ds.manifest_filepath=...
    torchrun --nproc-per-node 8 recipes/train_ssl.py --config-path librispeech --config-name ssl_sew_tiny
"""

from nemo.core.config import hydra_runner

from nemo_sew.train import train


@hydra_runner(config_path=".", config_name="ssl_tiny_mel")
def main(cfg):
    train(cfg)


if __name__ == "__main__":
    main()
