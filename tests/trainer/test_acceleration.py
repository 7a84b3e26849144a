"""Speed levers change how the step runs, never what it computes or what it saves."""

from __future__ import annotations

import pytest
import torch

from iclora_api.trainer_settings import TrainerSettings
from iclora_trainer.errors import ModelConfigError
from iclora_trainer.loop import load_and_precompute
from iclora_trainer.lora_io import export_lora, lora_parameters
from iclora_trainer.model.acceleration import (
    Acceleration,
    accelerate,
    attention_backends,
    checkpointed_blocks,
    prepare_for_training,
    selective_blocks,
)
from iclora_trainer.model.loading import load_transformer
from iclora_trainer.strategy import MaskedICLoraStrategy
from tests.helpers import make_settings

pytestmark = pytest.mark.trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("mode", "blocks"),
    [
        ("all", {0, 1, 2, 3}),
        ("none", set()),
        ("every:2", {0, 2}),
        ("every:1", {0, 1, 2, 3}),
        ("blocks:1", {0}),
        ("blocks:9", {0, 1, 2, 3}),
        ("blocks:0", set()),
        ("selective:2", {0, 1, 2, 3}),
    ],
)
def test_checkpointed_blocks(mode, blocks):
    assert checkpointed_blocks(mode, 4) == blocks
    assert selective_blocks(mode, 4) == ({0, 1} if mode == "selective:2" else set())


@pytest.mark.parametrize("mode", ["some", "every:0", "every:", "blocks:-1", "ALL", "selective:", "selective:all"])
def test_bad_checkpointing_is_rejected_naming_the_setting(mode):
    with pytest.raises(ModelConfigError, match="activation_checkpointing"):
        checkpointed_blocks(mode, 4)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainerSettings(activation_checkpointing=mode)


@pytest.fixture(scope="module")
def step_inputs(tiny_checkpoint, prepared_dataset, tmp_path_factory):
    settings = make_settings(tiny_checkpoint, tmp_path_factory.mktemp("accel"))
    data, _ = load_and_precompute(prepared_dataset, settings, CPU, torch.float32)
    batch = data.batch([0, 1], CPU)
    strategy = MaskedICLoraStrategy(fps=data.fps)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(batch.target.shape, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    return settings, strategy, batch, strategy.prepare_inputs(batch, noise, sigma)


def _model(settings: TrainerSettings, **levers) -> torch.nn.Module:
    model = load_transformer(settings.model_path or "", CPU, torch.float32)
    model = prepare_for_training(model, 8, settings.model_copy(update=levers), CPU)
    # B = 0 at init would leave lora_A without gradient: give B a fixed non-zero value.
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in lora_parameters(model).items():
            if "lora_B" in name:
                p.copy_(0.01 * torch.randn(p.shape, generator=g))
    return model


def _loss_and_grads(model, strategy, batch, inputs):
    loss = strategy.compute_loss(strategy.forward(model, inputs, batch, torch.float32), inputs).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lora_parameters(model).items()}


def _count_attention_calls(model) -> list[int]:
    calls = [0] * len(model.transformer_blocks)
    for i, block in enumerate(model.transformer_blocks):
        block.attn1.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("mode", ["none", "every:2", "blocks:1", "selective:2"])
def test_selective_checkpointing_gives_the_same_step_and_recomputes_only_the_chosen_blocks(step_inputs, mode):
    settings, strategy, batch, inputs = step_inputs
    reference = _model(settings, activation_checkpointing="all")
    ref_loss, ref_grads = _loss_and_grads(reference, strategy, batch, inputs)

    model = _model(settings, activation_checkpointing=mode)
    calls = _count_attention_calls(model)
    loss, grads = _loss_and_grads(model, strategy, batch, inputs)

    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    # A checkpointed block runs its forward twice (forward, then recomputation in backward).
    chosen = checkpointed_blocks(mode, len(calls))
    assert calls == [2 if i in chosen else 1 for i in range(len(calls))]


def test_levers_keep_the_saved_lora_layout(step_inputs):
    settings = step_inputs[0]
    plain = export_lora(_model(settings, activation_checkpointing="all"), 8, 8.0)
    levered = export_lora(_model(settings, activation_checkpointing="every:2"), 8, 8.0)
    assert plain.keys() == levered.keys()
    assert all(k.startswith("diffusion_model.transformer_blocks.") for k in levered)


def test_no_recomputation_outside_training(step_inputs):
    settings, strategy, batch, inputs = step_inputs
    model = _model(settings, activation_checkpointing="all").eval()
    calls = _count_attention_calls(model)
    with torch.no_grad():
        strategy.forward(model, inputs, batch, torch.float32)
    assert calls == [1] * len(calls)


def test_attention_backend_choice_keeps_the_result(step_inputs):
    settings, strategy, batch, inputs = step_inputs
    model = _model(settings).eval()
    with torch.no_grad():
        auto = strategy.forward(model, inputs, batch, torch.float32)
        with attention_backends(["math"]):
            math = strategy.forward(model, inputs, batch, torch.float32)
    torch.testing.assert_close(math, auto, rtol=1e-5, atol=1e-6)
    with pytest.raises(ModelConfigError, match="attention_backends"):
        attention_backends(["fastest"])


def test_fp8_refuses_a_device_without_fp8_matmuls(step_inputs):
    settings = step_inputs[0]
    model = load_transformer(settings.model_path or "", CPU, torch.float32)
    with pytest.raises(ModelConfigError, match="fp8_base needs a CUDA GPU"):
        accelerate(model, Acceleration(fp8=True), CPU)


def test_fp8_converts_only_the_frozen_base_projections(step_inputs):
    """The module swap itself (torchao Float8Linear); its matmuls run on Ada/Hopper GPUs only."""
    from torchao.float8.float8_linear import Float8Linear

    from iclora_trainer.model.acceleration import _convert_fp8

    model = _model(step_inputs[0])
    _convert_fp8(model)
    converted = {n for n, m in model.named_modules() if isinstance(m, Float8Linear)}
    assert converted and all(n.endswith(".base_layer") for n in converted)
    lora = [m for n, m in model.named_modules() if n.endswith((".lora_A.default", ".lora_B.default"))]
    assert lora and not any(isinstance(m, Float8Linear) for m in lora)
    assert all(p.dtype == torch.float32 for p in lora_parameters(model).values())


@pytest.mark.slow
def test_compiled_blocks_give_the_same_step(step_inputs):
    settings, strategy, batch, inputs = step_inputs
    reference = _model(settings, activation_checkpointing="blocks:2")
    ref_loss, ref_grads = _loss_and_grads(reference, strategy, batch, inputs)
    model = _model(settings, activation_checkpointing="blocks:2", compile_blocks=True)
    loss, grads = _loss_and_grads(model, strategy, batch, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def test_fused_lora_gives_the_same_step(step_inputs):
    settings, strategy, batch, inputs = step_inputs
    ref_loss, ref_grads = _loss_and_grads(_model(settings), strategy, batch, inputs)
    loss, grads = _loss_and_grads(_model(settings, fused_lora=True), strategy, batch, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _lora_linear(fused: bool, base_dtype: torch.dtype) -> torch.nn.Module:
    from iclora_trainer.lora_io import apply_lora

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([torch.nn.Module()])
    model.transformer_blocks[0].ff = torch.nn.Module()
    model.transformer_blocks[0].ff.net = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity(),
                                                              torch.nn.Linear(64, 96, bias=True)])
    model.to(base_dtype)
    apply_lora(model, 4, 8.0)
    layer = model.transformer_blocks[0].ff.net[2]
    with torch.no_grad():
        layer.lora_A["default"].weight.data = layer.lora_A["default"].weight.float()
        layer.lora_B["default"].weight.data = torch.randn(96, 4) * 0.1  # fp32 adapters, as the trainer keeps them
    if fused:
        from iclora_trainer.model.acceleration import _fuse_lora

        assert _fuse_lora(model) == 1
    return layer


class _OpLog:
    """Context logging each aten op run inside it as (op name, numel of its first output)."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, int]] = []

    def __enter__(self) -> _OpLog:
        from torch.utils._python_dispatch import TorchDispatchMode

        ops = self.ops

        class Log(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                first = out[0] if isinstance(out, tuple | list) and out else out
                ops.append((func.overloadpacket.__name__, first.numel() if isinstance(first, torch.Tensor) else 0))
                return out

        self._mode = Log()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def _full_size_ops(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Forward + backward of one projection; the aten ops that produced an output-sized tensor."""
    full = x.shape[0] * layer.base_layer.out_features
    with _OpLog() as log:
        y = layer(x)
        y.backward(torch.ones_like(y))
    return y, [name for name, numel in log.ops if numel == full]


def test_fused_lora_adds_the_branch_in_one_pass_and_keeps_the_activation_dtype():
    x = torch.randn(32, 64, dtype=torch.bfloat16, requires_grad=True)
    peft_y, peft_ops = _full_size_ops(_lora_linear(False, torch.bfloat16), x)
    fused_layer = _lora_linear(True, torch.bfloat16)
    fused_y, fused_ops = _full_size_ops(fused_layer, x.detach().requires_grad_())
    # PEFT upcasts to the fp32 adapters' dtype and back; the fused branch stays in bf16.
    assert fused_y.dtype == torch.bfloat16 and "_to_copy" in peft_ops
    assert "mul" in peft_ops and "add" in peft_ops
    assert not {"mul", "add", "_to_copy"} & set(fused_ops), fused_ops
    torch.testing.assert_close(fused_y, peft_y.to(torch.bfloat16), rtol=2e-2, atol=2e-2)
    # The gradients still reach the fp32 adapter parameters.
    assert fused_layer.lora_A["default"].weight.grad.dtype == torch.float32
    assert fused_layer.lora_B["default"].weight.grad.abs().sum() > 0


def test_fused_lora_refuses_a_transformer_without_adapters(step_inputs):
    model = load_transformer(step_inputs[0].model_path or "", CPU, torch.float32)
    with pytest.raises(ModelConfigError, match="fused_lora"):
        accelerate(model, Acceleration(fused_lora=True), CPU)


def _backward_attention(model, strategy, batch, inputs) -> int:
    """Forward attention calls (SDPA, any backend) run by the backward pass: recomputation."""
    loss = strategy.compute_loss(strategy.forward(model, inputs, batch, torch.float32), inputs).mean()
    with _OpLog() as log:
        loss.backward()
    return sum(name.startswith("_scaled_dot_product") and not name.endswith("backward") for name, _ in log.ops)


def test_selective_blocks_recompute_no_attention(step_inputs):
    """selective:K keeps the attention outputs of its K blocks: backward reruns only the others' attention."""
    settings, strategy, batch, inputs = step_inputs
    counts = {
        mode: _backward_attention(_model(settings, activation_checkpointing=mode), strategy, batch, inputs)
        for mode in ("none", "all", "selective:2", "selective:1")
    }
    # The tiny model has two blocks, each with self- and cross-attention.
    assert counts == {"none": 0, "all": 4, "selective:2": 0, "selective:1": 2}, counts


@pytest.mark.slow
def test_compiled_selective_fused_blocks_give_the_same_step(step_inputs):
    """The levers the GPU profile combines: op-level checkpointing and fused LoRA inside compiled blocks."""
    settings, strategy, batch, inputs = step_inputs
    ref_loss, ref_grads = _loss_and_grads(_model(settings), strategy, batch, inputs)
    levers = {"activation_checkpointing": "selective:1", "fused_lora": True, "compile_blocks": True}
    loss, grads = _loss_and_grads(_model(settings, **levers), strategy, batch, inputs)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "selective:3"])
def test_compiled_checkpointed_blocks_run_compiled_and_share_their_graphs(step_inputs, mode):
    """compile_blocks must compile: on an H200 a checkpoint traced by Dynamo hit a graph break in
    ltx-core's block and ran eager (FP8 + compile 1.6x slower than bf16 eager). Ten blocks, more
    than Dynamo's default recompile limit, share a few graphs instead of one each."""
    from ltx_core.model.transformer.model_configurator import LTXVideoOnlyModelConfigurator
    from torch._dynamo.utils import counters

    from iclora_dev.tiny_model import tiny_model_config

    settings, strategy, batch, inputs = step_inputs
    config = tiny_model_config()
    config["transformer"]["num_layers"] = 10
    torch.manual_seed(0)
    model = LTXVideoOnlyModelConfigurator.from_config(config).to(torch.float32)
    levers = {"activation_checkpointing": mode, "compile_blocks": True, "fused_lora": True}
    model = prepare_for_training(model, 8, settings.model_copy(update=levers), CPU)
    torch._dynamo.reset()
    counters.clear()
    for _ in range(2):
        _loss_and_grads(model, strategy, batch, inputs)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert 1 <= counters["stats"]["unique_graphs"] <= 4, dict(counters["stats"])
    assert counters["frames"]["ok"] == counters["frames"]["total"]
