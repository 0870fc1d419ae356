"""Standard Hugging Face model classes, built from small configs (no weights, no download), under
``gradscope.diagnose`` with their own loss (``labels`` given): once under the assumed recipe (no
optimizer given, as ``gradscope diagnose`` without a recipe runs them) and once under AdamW lr
3e-4. A healthy standard model must get no warning and no error. Results in docs/reliability.md.

    python benchmarks/standard_models.py [NAME ...]
"""

import sys
import warnings

import torch
import transformers as T

import gradscope

warnings.simplefilter("ignore")
T.logging.set_verbosity_error()
g = torch.Generator().manual_seed(0)
def ids(v, b=4, n=32): return torch.randint(0, v, (b, n), generator=g)
small = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=256, max_position_embeddings=64)
def causal(cfg_cls, model_cls, **kw):
    c = cfg_cls(**{**small, **kw}); m = model_cls(c); x = ids(256); return m, {"input_ids": x, "labels": x}
cases = {
 "llama": lambda: causal(T.LlamaConfig, T.LlamaForCausalLM, num_key_value_heads=4),
 "mistral": lambda: causal(T.MistralConfig, T.MistralForCausalLM, num_key_value_heads=4),
 "qwen2": lambda: causal(T.Qwen2Config, T.Qwen2ForCausalLM, num_key_value_heads=4),
 "gemma2": lambda: causal(T.Gemma2Config, T.Gemma2ForCausalLM, num_key_value_heads=4, head_dim=16),
 "gpt_neox": lambda: causal(T.GPTNeoXConfig, T.GPTNeoXForCausalLM),
 "gpt2": lambda: (lambda c: (T.GPT2LMHeadModel(c), (lambda x: {"input_ids": x, "labels": x})(ids(256))))(T.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64)),
 "bert": lambda: causal(T.BertConfig, T.BertForMaskedLM),
 "roberta": lambda: causal(T.RobertaConfig, T.RobertaForMaskedLM, max_position_embeddings=80),
 "distilbert": lambda: (lambda c: (T.DistilBertForMaskedLM(c), (lambda x: {"input_ids": x, "labels": x})(ids(256))))(T.DistilBertConfig(n_layers=2, dim=64, hidden_dim=128, n_heads=4, vocab_size=256, max_position_embeddings=64)),
 "t5": lambda: (lambda c: (T.T5ForConditionalGeneration(c), {"input_ids": ids(256), "labels": ids(256)}))(T.T5Config(num_layers=2, d_model=64, d_ff=128, num_heads=4, d_kv=16, vocab_size=256, decoder_start_token_id=0, pad_token_id=0)),
 "bart": lambda: (lambda c: (T.BartForConditionalGeneration(c), {"input_ids": ids(256), "labels": ids(256)}))(T.BartConfig(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=256, max_position_embeddings=64)),
 "mbart": lambda: (lambda c: (T.MBartForConditionalGeneration(c), {"input_ids": ids(256), "labels": ids(256)}))(T.MBartConfig(encoder_layers=2, decoder_layers=2, d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4, vocab_size=256, max_position_embeddings=64)),
 "vit": lambda: (T.ViTForImageClassification(T.ViTConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, image_size=32, patch_size=8, num_labels=10)), {"pixel_values": torch.randn(8, 3, 32, 32, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}),
 "convnext": lambda: (T.ConvNextForImageClassification(T.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], num_labels=10)), {"pixel_values": torch.randn(8, 3, 64, 64, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}),
 "resnet": lambda: (T.ResNetForImageClassification(T.ResNetConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], embedding_size=16, num_labels=10)), {"pixel_values": torch.randn(8, 3, 64, 64, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}),
 "swin": lambda: (T.SwinForImageClassification(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=10)), {"pixel_values": torch.randn(8, 3, 32, 32, generator=g), "labels": torch.randint(0, 10, (8,), generator=g)}),
}
names = sys.argv[1:] or list(cases)
for name in names:
    for rname in ("sgd-default", "adamw"):
        try:
            torch.manual_seed(0)
            m, inp = cases[name]()
            opt = None if rname == "sgd-default" else torch.optim.AdamW(m.parameters(), lr=3e-4)
            r = gradscope.diagnose(m, inp, optimizer=opt)
            alarms = [(f.code, f.rule, f.severity) for f in r.findings if f.severity != "info"]
            print(f"{name:10s} {rname:12s} {r.verdict.label:8s} loss={r.options['loss']} {alarms}", flush=True)
        except Exception as e:  # noqa: BLE001 - a crash is a result to print
            print(f"{name:10s} {rname:12s} CRASH {type(e).__name__}: {str(e)[:200]}", flush=True)
