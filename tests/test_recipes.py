"""Every recipe YAML loads and trains a few steps on CPU with the synthetic corpus swapped in.

GPU/cluster settings (accelerator, devices, precision, strategy) are replaced by CPU ones, LibriSpeech
data by the synthetic corpus (the lhotse recipes keep lhotse loading with bucketing), and the encoders
keep their widths but run 2 blocks. The launch scripts are checked by a dry run and a real 2-process
torchrun on CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "profiles" not in p.parts)
# recipes that need a checkpoint made by another recipe first
NEEDS_SSL = {"ctc_char_finetune_ll10h", "ctc_char_finetune_ls100h", "i3d_ctc_ls100h"}
NEEDS_STOCHASTIC_CTC = {"finetune_profile", "qat_finetune"}
NEEDS_CTC = {"prune_ctc_tiny_mel"}
NEEDS_IMPORTED_CTC = {"prune_imported_w2v2", "prune_w2v2_base_ls100h_mac60", "prune_w2v2_base_ls100h_mac50"}

pytestmark = pytest.mark.slow


def _cpu(cfg, corpus, out: Path, extra=()):
    from nemo_sew.train import load_config  # noqa: F401  (imports nemo_sew: registers the target prefix)

    with open_dict(cfg):
        cfg.trainer.update(accelerator="cpu", devices=1, num_nodes=1, strategy="auto", precision=32, max_steps=2,
                           max_time=None, limit_train_batches=2, limit_val_batches=1, val_check_interval=2,
                           accumulate_grad_batches=1, enable_progress_bar=False, num_sanity_val_steps=0)  # fmt: skip
        cfg.trainer.pop("use_distributed_sampler", None)
        cfg.exp_manager.update(exp_dir=str(out), create_tensorboard_logger=False, resume_if_exists=False)
        cfg.exp_manager.checkpoint_callback_params.always_save_nemo = False
        for split, key in (("train", "train_ds"), ("dev", "validation_ds")):
            ds = cfg.model.get(key)
            if ds is None:
                continue
            if ds.get("use_lhotse"):
                ds.pop("input_cfg", None)
                ds.update(cuts_path=str(corpus[split]["cuts"]), batch_duration=12.0, num_workers=0, pin_memory=False)
                if ds.get("use_bucketing"):
                    ds.update(num_buckets=2, bucket_buffer_size=200, shuffle_buffer_size=100)
                ds.pop("min_duration", None)
            else:
                ds.update(manifest_filepath=str(corpus[split]["manifest"]), num_workers=0, batch_size=4)
        if "encoder" in cfg.model and "preset" in cfg.model.encoder:
            cfg.model.encoder.arch = {**(cfg.model.encoder.get("arch") or {}), "num_layers": 2}
        if cfg.model.get("hubert") is not None and cfg.model.get("objective") == "hubert":
            cfg.model.hubert.centroids = str(_centroids(corpus, out, int(cfg.model.hubert.num_clusters)))
    for item in extra:
        key, value = item.split("=", 1)
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value != "null" else None, force_add=True)
    return cfg


def corpus_manifest(corpus) -> Path:
    return Path(corpus["test"]["manifest"])


def _centroids(corpus, out: Path, clusters: int) -> Path:
    from nemo_sew.ssl.targets import kmeans_from_manifest

    path = out / f"km{clusters}.npy"
    if not path.exists():
        kmeans_from_manifest(corpus["train"]["manifest"], path, "mfcc", num_clusters=clusters, max_hours=0.05)
    return path


def _train(recipe: Path, corpus, out: Path, extra=()):
    from nemo_sew.train import load_config, train

    return train(_cpu(load_config(recipe), corpus, out, extra))


def _checkpoint_fixture(recipe: str, name: str):
    """A module fixture: ``recipe`` trained 2 steps on the tiny corpus and saved as ``name``."""

    @pytest.fixture(scope="module")
    def fixture(tiny_corpus, tmp_path_factory):
        out = tmp_path_factory.mktemp(Path(name).stem)
        _train(ROOT / recipe, tiny_corpus, out, [f"save_to={out / name}"])
        return out / name

    return fixture


ssl_checkpoint = _checkpoint_fixture("recipes/librispeech/ssl_sew_tiny.yaml", "ssl.nemo")
stochastic_ctc = _checkpoint_fixture("recipes/ctc_char_stochastic_tiny_mel.yaml", "stochastic.nemo")
ctc_checkpoint = _checkpoint_fixture("recipes/ctc_char_tiny_mel.yaml", "ctc.nemo")


@pytest.fixture(scope="module")
def imported_ctc(tmp_path_factory):
    """A small random transformers Wav2Vec2ForCTC (wav2vec 2.0 base layout), converted with nemo-sew convert."""
    transformers = pytest.importorskip("transformers")
    from nemo_sew.convert import convert_local_dir

    out = tmp_path_factory.mktemp("imported")
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz", "'"]
    vocab = out / "vocab.json"
    vocab.write_text(__import__("json").dumps({t: i for i, t in enumerate(tokens)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(vocab))
    config = transformers.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=len(tokens),
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    transformers.Wav2Vec2ForCTC(config).save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(out / "hf")
    return convert_local_dir(out / "hf", out / "w2v2.nemo")


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(ROOT / "recipes")) for p in RECIPES])
def test_recipe_runs_a_few_steps(recipe, tiny_corpus, tmp_path, request):
    extra = []
    if recipe.stem in NEEDS_SSL:
        extra.append(f"init_from_ssl={request.getfixturevalue('ssl_checkpoint')}")
    if recipe.stem in NEEDS_STOCHASTIC_CTC:
        extra.append(f"init_from_nemo={request.getfixturevalue('stochastic_ctc')}")
    if recipe.stem in NEEDS_CTC:
        extra += [f"init_from_nemo={request.getfixturevalue('ctc_checkpoint')}", f"pruned_save_to={tmp_path / 'pruned.nemo'}"]
    if recipe.stem in NEEDS_IMPORTED_CTC:
        extra.append(f"init_from_nemo={request.getfixturevalue('imported_ctc')}")
    model = _train(recipe, tiny_corpus, tmp_path, extra)
    assert model.trainer.global_step == 2
    metrics = model.trainer.callback_metrics
    loss = metrics.get("train_loss", metrics.get("train_loss_step"))
    assert loss is not None and np.isfinite(float(loss)), dict(metrics)
    if recipe.stem in NEEDS_CTC | NEEDS_IMPORTED_CTC:  # pruning recipes: masks trained, budget logged
        assert model.encoder.pruning is not None and "prune_budget" in metrics
        assert [g.get("name") for g in model._optimizer.param_groups[-2:]] == ["prune_masks", "prune_multipliers"]
        assert model._optimizer.param_groups[-1]["maximize"]
        assert any(k.startswith("train_prune_") for k in metrics), sorted(metrics)
        if recipe.stem in NEEDS_IMPORTED_CTC:  # these distil from the unpruned model
            assert np.isfinite(float(metrics["distill_loss"]))
        if recipe.stem in NEEDS_CTC:  # the materialised model runs in NeMo's transcribe_speech flow
            pred = tmp_path / "pred.json"
            proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "transcribe_speech_flow.py"), str(tmp_path / "pruned.nemo"),
                                   str(corpus_manifest(tiny_corpus)), str(pred)], cwd=ROOT, capture_output=True, text=True,
                                  timeout=600)  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert all("pred_text" in line for line in pred.read_text().splitlines())


def test_launchers_dry_run():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_NNODES": "4", "SLURM_NTASKS_PER_NODE": "8"}
    recipe = "recipes/librispeech/ssl_sew_small.yaml"
    out = subprocess.run(["bash", "recipes/launch/slurm_train.sh", recipe, "trainer.accumulate_grad_batches=2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.startswith("srun ") and "trainer.num_nodes=4" in out and "trainer.devices=8" in out
    assert "trainer.accumulate_grad_batches=2" in out
    env = {**os.environ, "DRY_RUN": "1", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", "GPUS_PER_NODE": "8"}
    out = subprocess.run(["bash", "recipes/launch/torchrun_train.sh", recipe], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "--nnodes 2" in out and "--node-rank 1" in out and "--master-addr node0" in out and "trainer.num_nodes=2" in out
    assert "trainer.strategy" not in out  # a launcher never overrides the recipe's strategy
    bad = subprocess.run(["bash", "recipes/launch/slurm_train.sh", "no/such.yaml"], cwd=ROOT, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "recipe not found" in bad.stderr


def test_librispeech_recipes_train_under_plain_ddp():
    """Every multi-GPU recipe runs Lightning's plain ``ddp`` (no unused-parameter search): LayerDrop, closed
    pruning branches and the frozen-encoder period give every parameter a (zero) gradient (issue 31)."""
    from nemo_sew.train import load_config

    for recipe in sorted((ROOT / "recipes" / "librispeech").glob("*.yaml")):
        cfg = load_config(recipe)
        assert str(cfg.trainer.strategy) == "ddp", f"{recipe.name}: strategy {cfg.trainer.strategy}"


def test_torchrun_launcher_two_cpu_processes(tiny_corpus, tmp_path):
    """The torchrun launcher for real: 2 processes (gloo) train the demo recipe for 2 steps."""
    env = {**os.environ, "NNODES": "1", "GPUS_PER_NODE": "2", "ACCELERATOR": "cpu", "PYTHON": sys.executable,
           "MASTER_PORT": "29517", "OMP_NUM_THREADS": "1"}  # fmt: skip
    save = tmp_path / "tr.nemo"
    proc = subprocess.run(
        ["bash", "recipes/launch/torchrun_train.sh", "recipes/ctc_char_tiny_mel.yaml",
         f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
         f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
         "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0", "model.train_ds.batch_size=4",
         "++model.encoder.arch.num_layers=1", "trainer.max_steps=2", "trainer.max_time=null", "trainer.enable_progress_bar=false",
         f"exp_manager.exp_dir={tmp_path}", "exp_manager.create_checkpoint_callback=false", f"save_to={save}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert save.is_file()
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr  # Lightning: "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"


def test_qat_distils_from_the_fp_model(stochastic_ctc, tiny_corpus, tmp_path):
    """qat_distill: the fp init_from_nemo is a frozen, unquantized teacher; its KL term is logged and trained on."""
    from nemo_sew.train import load_config, train

    overrides = [f"init_from_nemo={stochastic_ctc}", "qat.bits=1", "profile.weight_bits=1", "qat_distill.weight=1.0"]
    model = train(_cpu(load_config(ROOT / "recipes" / "qat_finetune.yaml", overrides), tiny_corpus, tmp_path))
    assert model.trainer.global_step == 2
    distill = float(model.trainer.callback_metrics["distill_loss"])
    assert np.isfinite(distill) and distill > 0  # a 1-bit student cannot match its fp teacher exactly
    teacher = model._distill_teacher[0]
    assert teacher.encoder.quant_config is None and not any(p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith("_distill") for n in model.state_dict())  # the teacher is not saved
