"""bench/kernel_profile.py: kernel kinds, overlap-aware busy time, and the per-step breakdown.

Kernel names and times here are written for the test (shaped like CUDA's), not measured.
"""

import pytest


@pytest.fixture(scope="module")
def kp(bench_script):
    return bench_script("kernel_profile")


@pytest.mark.parametrize("name, kind", [
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("_rms_norm_forward_kernel", "triton"),
    ("triton_poi_fused_add_mul_0", "triton"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("Memcpy DtoH (Device -> Pinned)", "copy"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "elementwise"),
    ("some_unknown_thing", "other"),
])
def test_kernel_kinds_follow_the_names_cuda_reports(kp, name, kind):
    assert kp.kind_of(name) == kind


def test_busy_time_counts_overlapping_kernels_once(kp):
    K = kp.Kernel
    kernels = [K("a", 0, 10), K("b", 5, 15), K("c", 20, 30), K("d", 22, 25)]
    assert kp.union_us(kernels) == 25  # [0, 15] and [20, 30]
    assert kp.union_us([]) == 0


def test_breakdown_per_step_idle_share_and_top_kernels(kp):
    K = kp.Kernel
    # two steps of 10 ms wall each; per step a 6 ms gemm and a 2 ms attention kernel, back to back
    kernels = []
    for step in range(2):
        t0 = step * 10_000
        kernels += [K("nvjet_gemm", t0, t0 + 6_000), K("flash_fwd_kernel", t0 + 6_000, t0 + 8_000)]
    out = kp.breakdown(kernels, wall_s=0.020, steps=2)
    assert out["wall_ms_per_step"] == 10.0
    assert out["gpu_busy_ms_per_step"] == 8.0
    assert out["gpu_idle_pct"] == 20.0
    assert out["kernel_ms_per_step_by_kind"] == {"matmul": 6.0, "attention": 2.0}
    assert out["kernel_pct_by_kind"] == {"matmul": 75.0, "attention": 25.0}
    assert out["kernels_per_step"] == 2.0
    assert [k["name"] for k in out["top_kernels"]] == ["nvjet_gemm", "flash_fwd_kernel"]
    assert out["top_kernels"][0]["calls_per_step"] == 1.0


def test_a_cpu_profile_reports_wall_time_only(kp):
    prof = kp.StepProfiler()
    prof.start()
    sum(range(1000))
    result = prof.stop(steps=2)
    assert "gpu_busy_ms_per_step" not in result and result["steps"] == 2 and result["wall_ms_per_step"] >= 0


def test_host_breakdown_ranks_ops_by_their_own_host_time_per_step(kp):
    ops = [kp.HostOp("cudaLaunchKernel", 40_000, 3000), kp.HostOp("aten::mm", 10_000, 200),
           kp.HostOp("Torch-Compiled Region", 60_000, 128)]
    out = kp.host_breakdown(ops, steps=2, top=2)
    assert out["host_self_ms_per_step"] == 55.0
    assert [(o["name"], o["self_ms_per_step"], o["calls_per_step"]) for o in out["top_host_ops"]] == [
        ("Torch-Compiled Region", 30.0, 64.0), ("cudaLaunchKernel", 20.0, 1500.0)]
