"""``nemo-sew bench stochastic``: fixed-squeeze models vs one stochastic model at equal steps (trains models).

    nemo-sew bench stochastic --write BENCHMARKS.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nemo_sew.bench.report import machine_line


def bench_stochastic_table(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    steps: int = 800,
    finetune_steps: int = 200,
    fixed: Sequence[int] = (1, 2, 4),
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
) -> str:
    """The mini paper table: fixed-squeeze models vs one stochastic model at equal steps, then fine-tuned.

    Every model uses ``recipe`` with ``trainer.max_steps=steps`` and no time limit; the stochastic one
    draws its squeeze from ``sampler_values`` each step and is evaluated at every fixed factor; then it
    is fine-tuned for ``finetune_steps`` at s = 2 (``recipes/finetune_profile.yaml``).
    """
    from manifests.synthetic import prepare_synthetic

    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    common = [
        f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}",
        f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "exp_manager.create_checkpoint_callback=false", *extra,
    ]  # fmt: skip
    test = splits["test"]["manifest"]

    def wer_at(model, s: float) -> float:
        hyps, refs = transcribe_manifest(model, test, profile=s)
        return error_rates(hyps, refs)[0]

    fixed_wer = {}
    for s in fixed:
        cfg = load_config(recipe, [*common, f"++model.encoder.arch.compressor.squeeze={s}", f"model.profile.squeeze={s}",
                                   f"exp_manager.exp_dir={out_dir / f'fixed_s{s}'}"])  # fmt: skip
        fixed_wer[s] = wer_at(train(cfg), s)
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    stoch_path = out_dir / "stochastic.nemo"
    cfg = load_config(recipe, [*common, "++model.encoder.arch.expander=phase",
                               f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}}}",
                               f"exp_manager.exp_dir={out_dir / 'stochastic'}", f"save_to={stoch_path}"])  # fmt: skip
    stochastic = train(cfg)
    stoch_wer = {s: wer_at(stochastic, s) for s in fixed}
    ft_cfg = load_config(
        Path(recipe).parent / "finetune_profile.yaml",
        [*common, f"init_from_nemo={stoch_path}", "profile.squeeze=2", f"trainer.max_steps={finetune_steps}",
         f"exp_manager.exp_dir={out_dir / 'finetuned_s2'}"],
    )  # fmt: skip
    ft_wer = wer_at(train(ft_cfg), 2)

    lines = [
        f"### Stochastic squeeze vs fixed squeeze (synthetic corpus, {steps} steps each)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipe: `{recipe}`; stochastic sampler: squeeze ~ U{values}; test = held-out voices and sentences",
        "",
        "| squeeze | fixed model WER | stochastic model WER | relative | stochastic fine-tuned at s=2 ({} steps) | relative |".format(finetune_steps),
        "|---|---|---|---|---|---|",
    ]
    for s in fixed:
        rel = stoch_wer[s] / fixed_wer[s] - 1 if fixed_wer[s] else float("nan")
        ft = f"{ft_wer:.3f} | {ft_wer / fixed_wer[s] - 1:+.1%}" if s == 2 else "- | -"
        lines.append(f"| {s} | {fixed_wer[s]:.3f} | {stoch_wer[s]:.3f} | {rel:+.1%} | {ft} |")
    return "\n".join(lines) + "\n"


__all__ = ["bench_stochastic_table"]
