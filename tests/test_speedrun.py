"""The NanoGPT speedrun's levers as options of every Transformer family (models/_layers.TransformerOptions) and the
Muon + AdamW optimizer split (train.optim.name: muon): what each lever does to the model, that generation with a KV
cache stays exact with them, and that Muon resumes exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genforge.cli import main
from genforge.config import OptimSection
from genforge.errors import UserError
from genforge.models._layers import apply_rotary, rotary_tables
from genforge.models.captioner import Captioner, CaptionerConfig
from genforge.models.gpt import GPT, GPTConfig, KVCache
from genforge.train.optim import Muon, MuonWithAdamW, build_optimizer, orthogonalize, set_lr

REPO = Path(__file__).resolve().parents[1]
LEVERS = {"rotary": True, "qk_norm": True, "mlp": "relu2", "logit_softcap": 15.0, "tie_head": False}


def gpt(**overrides: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_dict({"family": "gpt", "preset": "debug", "vocab_size": 16, **overrides})).eval()


def test_rotary_turns_pairs_and_keeps_norms() -> None:
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(0))
    tables = rotary_tables(torch.arange(5), 8, 10000.0)
    turned = apply_rotary(x, tables)
    torch.testing.assert_close(turned[:, :, 0], x[:, :, 0])  # position 0: no rotation
    torch.testing.assert_close(turned.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
    # pair (0, 4) of position 1 turns by 1 radian (frequency base^0)
    c, s = torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))
    torch.testing.assert_close(turned[..., 1, 0], x[..., 1, 0] * c - x[..., 1, 4] * s)


def test_a_rotary_gpt_sees_only_relative_positions() -> None:
    model = gpt(rotary=True)
    assert "transformer.wpe.weight" not in model.state_dict()
    x = torch.randint(16, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        at_zero = model(x, position_ids=torch.arange(10))
        shifted = model(x, position_ids=torch.arange(7, 17))
    torch.testing.assert_close(at_zero, shifted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("levers", [LEVERS, {"rotary": True}, {"qk_norm": True, "mlp": "relu2"}])
def test_kv_cached_generation_is_exact_with_the_levers(levers: dict) -> None:
    model = gpt(**levers)
    seq = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    cache = KVCache(model.config.n_layer, max_len=12)
    with torch.no_grad():
        logits = model(seq, cache=cache, last_only=True)[:, -1]
        for _ in range(6):
            torch.testing.assert_close(logits, model(seq)[:, -1], atol=1e-5, rtol=0)
            token = logits.argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, token], dim=1)
            logits = model(token, cache=cache, last_only=True)[:, -1]
    # and the sliding context past block_size (32) still decodes (rotary keys are rebuilt like learned positions)
    assert len(model.generate([[1, 2, 3]], max_new_tokens=40, temperature=0)[0]) == 40


@torch.no_grad()
def test_each_lever_does_what_it_says() -> None:
    x = torch.randint(16, (3, 12), generator=torch.Generator().manual_seed(2))
    zero = gpt(zero_init_proj=True, tie_head=False)
    assert all(float(b.attn.c_proj.weight.abs().max()) == 0 and float(b.mlp.c_proj.weight.abs().max()) == 0
               for b in zero.transformer.h)
    assert float(zero(x).abs().max()) == 0  # zero head: every logit 0, a uniform first guess
    capped = gpt(logit_softcap=0.5)
    capped.lm_head.weight.data.mul_(100)
    assert float(capped(x).abs().max()) <= 0.5 < float(gpt()(x).abs().max() * 100)  # capped, however large
    untied = gpt(tie_head=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() == gpt().num_params() + 16 * 32
    relu2, gelu = gpt(mlp="relu2"), gpt()
    assert relu2.state_dict().keys() == gelu.state_dict().keys()
    assert not torch.allclose(relu2(x), gelu(x))
    normed = gpt(qk_norm=True)
    assert not torch.allclose(normed(x), gelu(x))


def test_defaults_are_nanogpts_block_so_old_checkpoints_load() -> None:
    keys = set(gpt().state_dict())
    assert "transformer.wpe.weight" in keys and "lm_head.weight" in keys
    assert not any("norm" in k for k in keys if "ln_" not in k)
    assert GPTConfig.from_dict({"family": "gpt", "vocab_size": 8}).model_dump(include={"rotary", "qk_norm", "mlp",
                                                                                     "tie_head"}) == \
        {"rotary": False, "qk_norm": False, "mlp": "gelu", "tie_head": True}


def test_the_captioner_takes_the_same_levers() -> None:
    torch.manual_seed(0)
    cfg = CaptionerConfig.from_dict({"family": "captioner", "preset": "debug", "vocab_size": 11, "boundary": 1,
                                     "image_size": 16, **LEVERS})
    model = Captioner(cfg).eval()
    assert model.wpe is None and model.lm_head.weight is not model.wte.weight
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    ids = model.caption(images, max_new_tokens=8, eos_token_ids=[], temperature=0)
    memories = model.memories(model.encode(images))
    seq = torch.tensor([[1] + ids[0]])
    full = model.decode(seq[:, :-1], [(k[:1], v[:1]) for k, v in memories]).argmax(-1)[0].tolist()
    assert full == ids[0]  # the cached decoding equals a full forward pass


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = gpt(tie_head=False)
    params = list(model.parameters())
    opt = build_optimizer(model, "model", params, OptimSection(name="muon", lr=4e-3, muon_lr=0.02,
                                                               weight_decay=0.1))
    assert isinstance(opt, MuonWithAdamW)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert muon | adamw == {id(p) for p in params} and not muon & adamw
    blocks = {id(m.weight) for m in model.transformer.h.modules() if isinstance(m, torch.nn.Linear)}
    assert muon == blocks  # embeddings, the head, gains stay with AdamW
    set_lr(opt, 2e-3)
    assert {g["lr"] for g in opt.adamw.param_groups} == {2e-3}
    assert {round(g["lr"], 9) for g in opt.muon.param_groups} == {0.01}  # muon_lr / lr kept by the schedule
    with pytest.raises(UserError, match="not Muon \\+ AdamW"):
        opt.load_state_dict({"state": {}, "param_groups": []})


def test_muon_equals_torch_muon_and_orthogonalizes(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(8, 5, generator=g), torch.randn(4, 12, generator=g)]
    grads = [[torch.randn(*w.shape, generator=g) for w in start] for _ in range(3)]
    ours = [torch.nn.Parameter(w.clone()) for w in start]
    theirs = [torch.nn.Parameter(w.clone()) for w in start]
    a = Muon(ours, lr=0.05, weight_decay=0.1, momentum=0.9, ns_dtype=torch.float32)
    b = torch.optim.Muon(theirs, lr=0.05, weight_decay=0.1, momentum=0.9, adjust_lr_fn="original")
    # torch.optim.Muon always orthogonalizes in bf16 (`grad.bfloat16()`): let it run in fp32, to compare the math
    monkeypatch.setattr(torch.Tensor, "bfloat16", lambda self, *args, **kwargs: self.float())
    for step in grads:
        for p, q, grad in zip(ours, theirs, step):
            p.grad, q.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-5, rtol=0)
    # in fp32 the iteration maps every singular value into a band around 1 (the quintic does not converge to 1)
    s = torch.linalg.svdvals(orthogonalize(torch.randn(64, 16, generator=g)))
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25


def test_muon_refuses_models_without_matrices() -> None:
    class Conv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def matrix_parameters(self) -> list[torch.nn.Parameter]:
            return [self.conv.weight]

    conv = Conv()
    with pytest.raises(UserError, match="2-D weight matrices, but .* shape \\(2, 1, 3, 3\\)"):
        build_optimizer(conv, "model", list(conv.parameters()), OptimSection(name="muon"))
    with pytest.raises(UserError, match="no hidden weight matrices"):
        build_optimizer(Conv(), "model", list(conv.parameters()), OptimSection(name="muon"))


def test_muon_runs_resume_bit_identically(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "debug" / "gpt.yaml")
    common = ["--set", "train.optim.name=muon", "--set", "model.rotary=true", "--set", "model.qk_norm=true",
              "--set", "train.checkpoint_every=3", "--set", "train.threads=1"]
    assert main(["train", config, "--run-dir", str(tmp_path / "a"), "--set", "train.steps=6", *common]) == 0
    assert main(["train", config, "--run-dir", str(tmp_path / "b"), "--set", "train.steps=3", *common]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--set", "train.steps=6"]) == 0
    a, b = (load_file(tmp_path / run / "step-6" / "model.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
