"""The machine line every benchmark section states."""

import torch

from nemo_sew.bench.report import machine_line


def test_machine_line_states_cores_torch_and_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ", 1 thread, " in machine_line() and f"torch {torch.__version__}" in machine_line()
        torch.set_num_threads(2)
        assert ", 2 threads, " in machine_line()
    finally:
        torch.set_num_threads(before)
