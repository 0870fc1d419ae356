"""Architectures as third parties build them: each healthy model gets no warning or error finding,
and a deliberately broken variant of it gets the finding it deserves. Tiny configs, built without
downloads."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import gradscope
from gradscope.rules.base import ERROR, WARNING
from gradscope.testing import assert_healthy
from gradscope.rules.example_models import he

VOCAB = 100


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _tokens(batch: int = 4, length: int = 12) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=_gen())


def _diagnose(model: nn.Module, inputs, loss_fn=None):
    return gradscope.diagnose(model, inputs, loss_fn, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))


def _alarms(report) -> list[str]:
    return [f"{f.severity} {f.rule}: {f.message}" for f in report.findings if f.severity in (ERROR, WARNING)]


def _rules(report) -> set[str]:
    return {f.rule for f in report.findings}


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


# -- post-LN: the norm on the residual stream after every sum, not the one after the last block --


def _torch_transformer(norm_first: bool, layers: int = 2) -> nn.Transformer:
    torch.manual_seed(0)
    return nn.Transformer(32, 4, layers, layers, 64, dropout=0.0, batch_first=True, norm_first=norm_first)


def _source_and_target():
    g = _gen()
    return torch.randn(4, 10, 32, generator=g), torch.randn(4, 8, 32, generator=g)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
def test_torch_pre_ln_encoder_decoder_is_healthy_and_post_ln_is_flagged():
    pre_ln = _diagnose(_torch_transformer(norm_first=True), _source_and_target())
    assert _alarms(pre_ln) == []
    assert "post-ln-transformer" not in _rules(pre_ln)
    assert pre_ln.structure.post_ln == []

    [post_ln] = [f for f in _diagnose(_torch_transformer(norm_first=False), _source_and_target()).findings
                 if f.rule == "post-ln-transformer"]
    # every norm after a sublayer's sum: 2 per encoder layer and 3 per decoder layer, less the first
    # of each stack, whose residual input is the source or target tensor itself (no gradient, so
    # not in the autograd graph)
    assert post_ln.evidence["post_ln_norms"] == 2 * 2 + 3 * 2 - 2
    assert "encoder.norm" not in post_ln.layers and "decoder.norm" not in post_ln.layers


def _whisper(transformers):
    config = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=8,
        max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config)
    return model, {"input_features": torch.randn(4, 8, 32, generator=_gen()), "labels": _tokens(length=8)}


def _mbart(transformers):
    config = transformers.MBartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
        pad_token_id=1)
    torch.manual_seed(0)
    model = transformers.MBartForConditionalGeneration(config)
    ids = _tokens()
    return model, {"input_ids": ids, "labels": ids}


def _t5(transformers, feed_forward: str = "relu", layers: int = 6):
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=layers, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, feed_forward_proj=feed_forward)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    ids = _tokens()
    return model, {"input_ids": ids, "labels": ids}


@pytest.mark.parametrize("build", [_whisper, _mbart], ids=["whisper", "mbart"])
def test_hugging_face_pre_ln_encoder_decoders_are_healthy(transformers, build):
    model, inputs = build(transformers)
    report = _diagnose(model, inputs)
    assert _alarms(report) == []
    assert "post-ln-transformer" not in _rules(report)
    assert report.structure.post_ln == []


# -- init: T5's tied head and its own init are what T5 means; a really mismatched init is not --


@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_stock_t5_is_healthy(transformers, feed_forward):
    model, inputs = _t5(transformers, feed_forward)
    assert model.lm_head.weight is model.shared.weight
    report = assert_healthy(model, inputs, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    assert "init-mismatch" not in _rules(report)


def test_t5_layers_name_the_activation_that_runs_after_them(transformers):
    model, inputs = _t5(transformers, "gated-gelu", layers=2)
    structure = _diagnose(model, inputs).structure
    after = {w.name: (w.activation_type, w.activation) for w in structure.weight_layers}
    # registered wi_0, wi_1, wo, dropout, act; run wi_0, act, wi_1, product, dropout, wo
    assert after["encoder.block.0.layer.1.DenseReluDense.wi_0"] == ("NewGELUActivation", "relu")
    assert after["encoder.block.0.layer.1.DenseReluDense.wi_1"] == (None, None)
    assert after["encoder.block.0.layer.1.DenseReluDense.wo"] == (None, None)
    [head] = [w for w in structure.weight_layers if w.name == "lm_head"]
    assert "shared" in head.tied_to


# -- GPT-2's Conv1D: a weight layer held as (in, out), judged like a Linear --


def _gpt2(transformers, initializer_range: float = 0.02):
    config = transformers.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32,
                                     initializer_range=initializer_range)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = _tokens()
    return model, {"input_ids": ids, "labels": ids}


def _gpt_neox(transformers, initializer_range: float = 0.02):
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=4, hidden_size=32, intermediate_size=128, num_attention_heads=4, vocab_size=VOCAB,
        max_position_embeddings=32, initializer_range=initializer_range)
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config)
    ids = _tokens()
    return model, {"input_ids": ids, "labels": ids}


def test_gpt2_conv1d_layers_are_weight_layers_with_their_own_fans(transformers):
    model, inputs = _gpt2(transformers)
    layers = {w.name: w for w in _diagnose(model, inputs).structure.weight_layers}
    # four Conv1D per block (c_attn, attn c_proj, c_fc, mlp c_proj) and the head
    assert len(layers) == 4 * 4 + 1
    c_fc = layers["transformer.h.0.mlp.c_fc"]
    assert (c_fc.type, c_fc.fan_in, c_fc.fan_out, c_fc.activation) == ("Conv1D", 32, 128, "relu")
    weight = model.transformer.h[0].mlp.c_fc.weight.detach().double()
    assert c_fc.gain == pytest.approx(weight.std().item() * 32 ** 0.5, rel=1e-9)


@pytest.mark.parametrize("build", [_gpt2, _gpt_neox], ids=["gpt2", "gpt-neox"])
def test_gpt2_and_gpt_neox_are_judged_alike_at_a_sound_and_a_unit_init(transformers, build):
    """Measured on 400 AdamW (3e-4) steps on bytes of Python source, 4 layers, width 64: at
    initializer_range 1.0 GPT-2 ended at a loss of 5.39 and GPT-NeoX at 4.40 (uniform bytes: 5.55),
    at 0.02 at 2.55 and 2.42."""
    model, inputs = build(transformers)
    assert_healthy(model, inputs, optimizer=torch.optim.AdamW(model.parameters(), lr=3e-4))
    model, inputs = build(transformers, initializer_range=1.0)
    assert "init-mismatch" in {f.rule for f in _diagnose(model, inputs).findings if f.severity == WARNING}


class TiedReluLM(nn.Module):
    """T5's output side (a head tied to the N(0, 1) embedding, the hidden state rescaled by
    d_model^-0.5 before it) around a plain stack of ReLU layers."""

    def __init__(self, depth: int = 8, width: int = 32, init=he) -> None:
        super().__init__()
        self.shared = nn.Embedding(VOCAB, width)
        nn.init.normal_(self.shared.weight, std=1.0, generator=_gen())
        self.blocks = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())])
        for layer in self.blocks[::2]:
            init(layer.weight)
        self.lm_head = nn.Linear(width, VOCAB, bias=False)
        self.lm_head.weight = self.shared.weight
        self.scale = width ** -0.5

    def forward(self, ids):
        return self.lm_head(self.blocks(self.shared(ids)) * self.scale)


def _lm_loss(logits, ids):
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten())


def test_a_t5_like_lm_is_healthy_with_he_init_and_flagged_with_n01_layers():
    torch.manual_seed(0)
    healthy = _diagnose(TiedReluLM(init=he), _tokens(), _lm_loss)
    assert _alarms(healthy) == []
    assert "init-mismatch" not in _rules(healthy)

    torch.manual_seed(0)
    broken = _diagnose(TiedReluLM(init=nn.init.normal_), _tokens(), _lm_loss)
    [mismatch] = [f for f in broken.findings if f.rule == "init-mismatch"]
    assert mismatch.severity == WARNING
    assert mismatch.layers == [f"blocks.{2 * i}" for i in range(8)]  # the tied head is not among them


class CaiT(nn.Module):
    """A CaiT-style vision transformer (Touvron et al. 2021): patch embedding, pre-LN blocks with
    talking-heads attention, a GELU MLP and LayerScale, then class-attention blocks on the class
    token; Linear weights truncated-normal with std 0.02, as the reference code initialises them."""

    def __init__(self, depth: int = 6, class_depth: int = 2, dim: int = 64, heads: int = 4, patch: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (16 // patch) ** 2, dim))
        self.blocks = nn.ModuleList([_LayerScaleBlock(dim, heads, _TalkingHeadAttention(dim, heads))
                                     for _ in range(depth)])
        self.class_blocks = nn.ModuleList([_LayerScaleBlock(dim, heads, _ClassAttention(dim, heads), class_token=True)
                                           for _ in range(class_depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        for block in self.class_blocks:
            cls = block(torch.cat([cls, x], dim=1), cls)
        return self.head(self.norm(cls)[:, 0])


class _TalkingHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj_l = nn.Linear(heads, heads)
        self.proj_w = nn.Linear(heads, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        attn = self.proj_l(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _ClassAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        split = (b, -1, self.heads, c // self.heads)
        q = self.q(x[:, :1]).reshape(split).transpose(1, 2)
        k, v = (f(x).reshape(split).transpose(1, 2) for f in (self.k, self.v))
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, 1, c))


class _LayerScaleBlock(nn.Module):
    def __init__(self, dim: int, heads: int, attention: nn.Module, class_token: bool = False,
                 init_scale: float = 0.1) -> None:
        super().__init__()
        self.class_token = class_token
        self.norm1, self.attn = nn.LayerNorm(dim), attention
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma_1 = nn.Parameter(init_scale * torch.ones(dim))
        self.gamma_2 = nn.Parameter(init_scale * torch.ones(dim))

    def forward(self, x, stream=None):
        stream = x if stream is None else stream
        stream = stream + self.gamma_1 * self.attn(self.norm1(x))
        return stream + self.gamma_2 * self.mlp(self.norm2(stream))


def test_cait_style_vit_is_healthy():
    torch.manual_seed(0)
    model = CaiT()
    images = torch.randn(8, 3, 16, 16, generator=_gen())
    labels = torch.randint(0, 10, (8,), generator=_gen())
    report = _diagnose(model, images, lambda logits: F.cross_entropy(logits, labels))
    assert _alarms(report) == []
    assert "init-mismatch" not in _rules(report)
    fc1 = [w for w in report.structure.weight_layers if w.name.endswith("mlp.0")]
    assert len(fc1) == 8 and all(w.activation_type == "GELU" and not w.default_init for w in fc1)


# -- coverage: a model the depth rules cannot judge says so instead of calling itself healthy --


class LSTMLanguageModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel: embedding, LSTM, decoder, with dropout
    (one module, called twice) when ``dropout`` > 0."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(VOCAB, 32)
        self.lstm = nn.LSTM(32, 64, batch_first=True)
        self.head = nn.Linear(64, VOCAB)

    def forward(self, ids):
        return self.head(self.drop(self.lstm(self.drop(self.embed(ids)))[0]))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_an_lstm_language_model_says_what_was_not_checked(dropout):
    torch.manual_seed(0)
    report = _diagnose(LSTMLanguageModel(dropout), _tokens(), _lm_loss)
    assert report.findings == []
    assert set(report.coverage.not_checked) == {"vanishing-gradient", "exploding-gradient"}
    assert report.no_findings_text.startswith("No findings. Checked: nonfinite-gradient, ")
    assert report.no_findings_text.endswith(
        "; not checked: vanishing-gradient, exploding-gradient (depth profile: fewer than 4 layers (dropout and "
        "identity layers not counted) carry a backpropagated signal).")
    assert "healthy" not in report.no_findings_text
