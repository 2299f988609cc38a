"""unet.inference.machine: what a measurement ran on."""

from __future__ import annotations

import torch

from unet.inference import machine


def test_cpu_model_and_memory_from_proc_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 1.0GHz\nflags\t: sse\n")
    assert machine.cpu_model(cpuinfo) == "Test CPU @ 1.0GHz"
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:  1 kB\n")
    assert machine.memory_gib(meminfo) == 24.0
    assert machine.memory_gib(tmp_path / "absent") is None
    assert machine.cpu_model(tmp_path / "absent")  # falls back to the platform's name


def test_describe_this_machine():
    info = machine.describe()
    assert info["torch"] == torch.__version__
    assert 1 <= info["usable_cores"] <= info["cores"]
    assert (info["gpu"] is not None) == torch.cuda.is_available()
    load = machine.load_average()
    assert load is None or (len(load) == 3 and min(load) >= 0)
