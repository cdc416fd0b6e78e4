"""NeMo-style Hydra entry point for nemo_sew CTC recipes.

    python recipes/train_ctc.py --config-path . --config-name ctc_char_tiny_mel \
        model.train_ds.manifest_filepath=... model.validation_ds.manifest_filepath=...
    torchrun --nnodes N --nproc-per-node 8 recipes/train_ctc.py ... trainer.devices=8 trainer.num_nodes=N trainer.strategy=ddp
"""

from nemo.core.config import hydra_runner

from nemo_sew.train import train


@hydra_runner(config_path=".", config_name="ctc_char_tiny_mel")
def main(cfg):
    train(cfg)


if __name__ == "__main__":
    main()
