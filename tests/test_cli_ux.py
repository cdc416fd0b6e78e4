"""The command line answers at once and names what is wrong (issue 29, item 6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nemo_sew.cli import main


def test_parsing_the_command_line_imports_no_heavy_package():
    """``nemo-sew --help``, a typo or a missing argument are answered by argparse alone: building the parser (every
    subcommand, the bench plugins included) imports neither torch, NeMo, Lightning nor onnx."""
    code = (
        "import sys\n"
        "from nemo_sew.cli import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in ('torch', 'nemo', 'lightning', 'onnx', 'onnxruntime', 'lhotse') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", "m.nemo", "--manfest", "x.json"], "unknown option --manfest (did you mean --manifest?)"),
        (["bench", "cpu", "--wrte"], "unknown option --wrte (did you mean --write?)"),
        (["evaluate", "m.nemo", "--manifest=x.json", "--profle=s2"], "unknown option --profle (did you mean --profile?)"),
    ],
)
def test_an_unknown_option_is_named_with_the_nearest_one(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_known_options_and_overrides_pass_the_check(capsys):
    with pytest.raises(SystemExit) as exit_:  # parsed fine; the subcommand then needs its required --manifest
        main(["evaluate", "m.nemo"])
    assert "required" in capsys.readouterr().err and exit_.value.code == 2
    assert main(["evaluate", "missing.nemo", "--manifest", "x.json"]) == 2  # a missing file: one line, exit 2
    assert "model not found: missing.nemo" in capsys.readouterr().err
