"""The profile table's categories and the CPU path of :func:`benchmarks.profile_breakdown.breakdown`."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks import model_step
from benchmarks.profile_breakdown import CATEGORIES, breakdown, category


@pytest.mark.parametrize(("name", "want"), [
    ("void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda(...)>", "copy"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda...>", "copy"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<...>", "copy"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, ...>", "layout"),
    ("void nhwcToNchwKernel<float, float, float, true, false, (cudnnKernelDataType_t)0>", "layout"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0", "attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>", "attention"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution"),
    ("sm90_xmma_wgrad_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_kernel", "matmul"),
    ("nvjet_tst_128x192_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", "norm/element-wise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(...)>", "norm/element-wise"),
    ("triton_poi_fused__to_copy_add_native_group_norm_0", "fused (compiled)"),
    ("aten::addmm", "matmul"),
    ("aten::convolution", "convolution"),
    ("aten::_to_copy", "copy"),
    ("some_vendor_kernel", "other"),
])
def test_kernel_names_fall_in_their_category(name: str, want: str) -> None:
    assert category(name) == want


def test_cpu_breakdown_counts_the_copies_a_step_issues() -> None:
    x = torch.randn(64, 64)
    w = torch.randn(64, 64)

    def step() -> None:
        y = (x @ w).t().contiguous()  # 1 contiguous (a copy)
        y.clone().to(torch.float64)  # 1 clone, 1 _to_copy (each runs copy_ inside)

    b = breakdown(step, torch.device("cpu"), steps=3)
    assert set(b["ms"]) == set(CATEGORIES)
    assert b["copy_ops_per_step"] >= 3
    assert b["count_per_step"]["matmul"] == 1
    assert b["ms"]["copy"] > 0 and b["wall_ms"] > 0
    assert 0 <= b["share_of_wall"]["idle"] <= 1


def test_model_step_profile_lands_in_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    model_step.main(["--size", "tiny", "--device", "cpu", "--only", "stage2", "--steps", "1", "--warmup", "0",
                     "--frames", "2", "--motion-frames", "1", "--profile", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    prof = row["profile"]
    assert prof["step_ms"] == row["time_s"] * 1e3 and prof["idle_vs_step_ms"] >= 0
    assert prof["copy_ops_per_step"] > 100  # autocast's weight casts alone are hundreds
    assert prof["ms"]["matmul"] > 0 and prof["ms"]["convolution"] > 0 and prof["ms"]["attention"] > 0
