"""Branch kinds declare their prunable units (issue 28 item 5): the declarations cover every branch the block builders
make, and for each kind the masked model equals its materialised one and the cost model counts the materialised
arch's MACs exactly as the soft widths at the hard mask. The encoder package's split keeps its names importable."""

import pytest
import torch
from test_prune import NO_DROPOUT, _randomise, _valid_diff

from nemo_sew import build_encoder
from nemo_sew.arch import BLOCK_KINDS, BlockSpec
from nemo_sew.cost import COMPONENTS, KEEP_KEYS, SOFT_KEYS, encoder_cost
from nemo_sew.nn.blocks import BLOCK_BUILDERS, BRANCH_KINDS, BlockOptions, branch_kind, build_block
from nemo_sew.prune import materialize_encoder, materialize_state
from nemo_sew.prune.masks import UNITS

# small encoders that together hold every branch kind (a new kind needs a preset here that builds it)
CANDIDATES = {
    "transformer": ("tiny_mel", {"d_model": 64, "num_layers": 3, "blocks": {"heads": 4, "head_dim": 16, "ffn_dims": [96]}}),
    "conformer": ("tiny_mel_conformer", {"d_model": 64, "num_layers": 2,
                                         "blocks": {"heads": 4, "head_dim": 16, "ffn_dims": [96, 80], "conv_kernel": 7}}),
}  # fmt: skip


def _full_spec(kind: str) -> BlockSpec:
    """A block of ``kind`` with every branch present."""
    traits = BLOCK_KINDS[kind]
    return BlockSpec(kind, heads=3, head_dim=8, ffn_dims=tuple(16 + 4 * j for j in range(traits.ffns)),
                     conv_channels=12 if traits.conv_module else 0, conv_kernel=3)  # fmt: skip


@pytest.mark.parametrize("block_kind", sorted(BLOCK_BUILDERS))
def test_every_branch_a_builder_makes_is_declared_with_the_parameters_that_carry_its_units(block_kind):
    spec = _full_spec(block_kind)
    block = build_block(spec, BlockOptions(d_model=32))
    assert block.branch_names
    for name in block.branch_names:
        kind, column = branch_kind(name)
        body = getattr(block, name).body
        assert isinstance(body, kind.body), (name, kind.name)
        n, per_unit = kind.count(spec, column), kind.channels_per_unit(spec)
        assert n > 0
        for where in kind.slices:
            width = n * per_unit * (2 if where.channels == "glu" else 1)
            for module in where.modules:
                weight = getattr(body, module).weight
                assert weight.shape[where.axis] == width, (name, module, tuple(weight.shape))
        assert getattr(body, kind.output).bias is not None  # a whole-branch mask folds into weight and bias


def test_declarations_are_consistent_with_pruning_and_the_cost_model():
    names = [n for k in BRANCH_KINDS for n in k.branches]
    assert len(names) == len(set(names))  # each branch name has exactly one kind
    with pytest.raises(KeyError, match="no declared kind"):
        branch_kind("cgmlp")
    for kind in BRANCH_KINDS:
        assert set(kind.components) <= set(COMPONENTS)
        assert kind.unit in UNITS and kind.width in SOFT_KEYS and kind.keep in KEEP_KEYS
        assert hasattr(BlockSpec(), kind.width)
    kinds_in_candidates = set()
    for preset, arch in CANDIDATES.values():
        enc = build_encoder(preset, **arch)
        kinds_in_candidates |= {branch_kind(n)[0].name for layer in enc.layers for n in layer.branch_names}
    assert kinds_in_candidates == {k.name for k in BRANCH_KINDS}  # every kind is exercised below


def _encoder_with(kind, seed):
    """A candidate encoder holding branches of ``kind``, with masks on ``kind``'s units and whole branches, at a
    random keep-set (soft deterministic values: the kept units' scales fold into the weights)."""
    for preset, arch in CANDIDATES.values():
        enc = build_encoder(preset, dropout=NO_DROPOUT, pruning={"units": [kind.unit, "branches"], "budget": "mac"}, **arch)
        if any(kind.unit == s.unit for s in enc.pruning.slots):
            return _randomise(enc, seed=seed, mean=1.5, std=3.0).eval()
    raise AssertionError(f"no candidate encoder has a {kind.name} branch: add one to CANDIDATES")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", BRANCH_KINDS, ids=lambda k: k.name)
def test_each_kind_materialises_to_the_masked_model_and_the_cost_of_its_soft_widths(kind, seed):
    enc = _encoder_with(kind, seed)
    masks = enc.pruning.deterministic()
    unit_masks = [masks[s.key] for s in enc.pruning.slots if s.unit == kind.unit]
    assert any(0 < int((m != 0).sum()) < m.numel() for m in unit_masks)  # a real keep-set: some units go, some stay
    pruned = materialize_encoder(enc).eval()
    for li, layer in enumerate(pruned.layers):
        for name in layer.branch_names:
            k, column = branch_kind(name)
            assert k.count(pruned.arch.blocks[li], column) > 0  # a branch left in the arch has units
    x, lengths = torch.randn(3, 80, 140), torch.tensor([140, 111, 70])
    with torch.no_grad():
        assert _valid_diff(enc.run(x, lengths), pruned.run(x, lengths)) <= 1e-4
    # the cost model: the materialised arch's MACs are the dense arch's at the hard mask's soft widths and keeps
    soft, keep = enc.pruning.soft_widths(expected=False)
    lengths_in = torch.tensor([16000 // 160, 9000 // 160])
    exact = encoder_cost(pruned.arch, None, lengths_in)
    counted = encoder_cost(enc.arch, None, lengths_in, soft=soft, keep=keep)
    for name in ("total", "attention_proj", "attention_scores", "ffn", "conv_module"):
        torch.testing.assert_close(getattr(counted, name), getattr(exact, name), rtol=1e-12, atol=0)
    assert materialize_state(enc)[0] == pruned.arch


def test_the_encoder_package_keeps_every_name_and_the_config_path():
    """Every name imported from ``nemo_sew.encoder`` before the split still is, and ``_target_:
    nemo_sew.encoder.SqueezeEncoder`` (what configs may name) resolves to the class."""
    from hydra.utils import get_class

    import nemo_sew
    import nemo_sew.encoder as package
    from nemo_sew.encoder import (  # noqa: F401
        Draw, EncoderOutput, SqueezeEncoder, build_encoder, encoder_config, layerdrop_decisions,
        upgrade_legacy_encoder_state,
    )  # fmt: skip

    assert get_class("nemo_sew.encoder.SqueezeEncoder") is SqueezeEncoder is nemo_sew.SqueezeEncoder
    assert nemo_sew.EncoderOutput is EncoderOutput and nemo_sew.encoder_config is encoder_config
    assert set(package.__all__) <= set(dir(package))


def test_the_torch_core_runs_without_nemo():
    """``nemo_sew.encoder.core`` (and the policies, records, config) import and run where NeMo is not installed;
    only the NeMo adapter ``SqueezeEncoder`` needs it."""
    import textwrap

    from test_package_edges import _BLOCK_NEMO, _python

    code = _BLOCK_NEMO + textwrap.dedent("""
        import torch
        from nemo_sew.encoder import Draw, EncoderCore, parse_options
        enc = EncoderCore(parse_options("tiny_mel", {"num_layers": 2, "d_model": 64}, gates={"kind": "global"},
                                        learned_rate={"target": 2.0}, pruning={"units": ["heads", "ffn"]}))
        out = enc(torch.randn(2, 80, 100), torch.tensor([100, 80]), enc.draw(step=3))
        try:
            from nemo_sew.encoder import SqueezeEncoder
        except ImportError:
            pass
        else:
            raise AssertionError("SqueezeEncoder imported without NeMo")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("nemo", "lightning", "pytorch_lightning"))
        print(leaked, sorted(out.aux_losses))
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[] ['gate_budget', 'prune_budget', 'rate_penalty']", out.stdout[-2000:]
