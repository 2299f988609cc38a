"""Choosing the training precision (unet.inference.precision)."""

from __future__ import annotations

from unet.inference.precision import cpu_has_native_bf16, resolve_precision

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n"
AMX = "flags : fpu avx2 amx_tile amx_bf16\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert not cpu_has_native_bf16(AVX2_ONLY)
    assert cpu_has_native_bf16(AVX512_BF16) and cpu_has_native_bf16(AMX)
    assert not cpu_has_native_bf16("")  # no /proc/cpuinfo: assume emulation


def test_auto_falls_back_to_fp32_on_cpus_without_bf16():
    assert resolve_precision("auto", "cpu", AVX2_ONLY) == "32-true"
    assert resolve_precision("auto", "cpu", AVX512_BF16) == "bf16-mixed"
    assert resolve_precision("32-true", "cpu", AVX512_BF16) == "32-true"  # explicit wins
    assert resolve_precision("bf16-mixed", "cpu", AVX2_ONLY) == "bf16-mixed"


def test_training_with_auto_precision_runs_here(compose_train, small_overrides, data_dir, tmp_path):
    from unet.training.task import train

    overrides = ["debug=fast_dev_run", "trainer.enable_progress_bar=false"]
    cfg = compose_train(
        [*overrides, "trainer.precision=auto", *small_overrides], tmp_path, data_dir
    )
    metrics = train(cfg)
    expected = "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    assert cfg.trainer.precision == expected and 0.0 <= metrics["val/pixel_error"] <= 1.0
