"""Inputs guessed for a model file that gives none (gradscope/guessed_inputs.py): token ids are
also passed as a language model's targets when its forward takes them and returns its loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gradscope.guessed_inputs import infer_inputs


class LanguageModel(nn.Module):
    """Hugging Face's convention: forward(input_ids, labels=None) returns a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 50)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.view(-1, 50), labels.view(-1))
        return out


class SequenceClassifier(nn.Module):
    """labels here are one class per sequence: token ids do not fit there."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.embed(input_ids).mean(1))
        return logits if labels is None else (logits, F.cross_entropy(logits, labels))


def test_a_language_model_gets_its_token_ids_as_labels_too():
    inputs, how = infer_inputs(LanguageModel(), "lm.py")
    assert set(inputs) == {"input_ids", "labels"} and inputs["labels"] is inputs["input_ids"]
    assert tuple(inputs["input_ids"].shape) == (16, 32) and inputs["input_ids"].max() < 50
    assert how.endswith("token ids of shape (16, 32), also passed as labels so that the model computes its own loss")


def test_labels_that_are_not_token_shaped_are_left_out():
    inputs, how = infer_inputs(SequenceClassifier(), "classifier.py")
    assert isinstance(inputs, torch.Tensor) and tuple(inputs.shape) == (16, 32)
    assert "also passed" not in how


class Discriminator(nn.Module):
    """ELECTRA's discriminator's shape: token ids in, a BCE loss against 0/1 labels out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 8), nn.Linear(8, 1)

    def forward(self, input_ids, labels=None):
        logits = self.head(self.emb(input_ids)).squeeze(-1)
        loss = None if labels is None else F.binary_cross_entropy_with_logits(logits, labels.float())
        return {"logits": logits, "loss": loss}


def test_ids_are_not_passed_as_labels_to_a_model_whose_loss_they_make_negative():
    inputs, how = infer_inputs(Discriminator(), "model.py")
    assert "labels" not in (inputs if isinstance(inputs, dict) else {}) and "also passed as" not in how


class EncoderDecoder(nn.Module):
    """T5's shape: the decoder needs inputs, which the model builds from its labels when given."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.enc, self.dec = nn.Embedding(50, 8), nn.Linear(8, 8), nn.Linear(8, 50)

    def forward(self, input_ids, labels=None, decoder_input_ids=None):
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = torch.roll(labels, 1, dims=1)
        if decoder_input_ids is None:
            raise ValueError("You must specify decoder_input_ids or labels")
        logits = self.dec(self.enc(self.emb(input_ids)) + self.emb(decoder_input_ids))
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"logits": logits, "loss": loss}


def test_an_encoder_decoder_gets_its_ids_as_labels_to_build_its_decoder_inputs():
    inputs, how = infer_inputs(EncoderDecoder(), "model.py")
    assert set(inputs) == {"input_ids", "labels"} and torch.equal(inputs["input_ids"], inputs["labels"])
    assert "builds its decoder's inputs" in how


def test_a_forward_with_several_required_inputs_gets_the_guess_as_each():
    """torch's nn.Transformer takes (src, tgt) and nn.MultiheadAttention (query, key, value), all
    of one shape: the guess goes to each. Before, every guess failed with "missing 1 required
    positional argument: 'tgt'" and the CLI asked for an example input."""
    torch.manual_seed(0)
    transformer = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                                 dim_feedforward=32)
    inputs, how = infer_inputs(transformer, "model.py")
    assert isinstance(inputs, tuple) and len(inputs) == 2 and inputs[0].shape == inputs[1].shape
    assert inputs[0].shape[-1] == 16 and not torch.equal(inputs[0], inputs[1])
    assert "a separate draw for each of its arguments src and tgt" in how
    transformer(*inputs)  # the model runs on them

    attention = nn.MultiheadAttention(8, 2)
    inputs, how = infer_inputs(attention, "model.py")
    assert len(inputs) == 3 and "query, key and value" in how
    assert attention(*inputs)[0].shape == inputs[0].shape


def test_a_siamese_forward_gets_two_different_inputs():
    """The same tensor as both inputs of a Siamese network makes its difference exactly 0, and
    with it every gradient: a diagnosis of nothing."""

    class Siamese(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

        def forward(self, a, b):
            return (self.embed(a) - self.embed(b)).pow(2).sum(1)

    torch.manual_seed(0)
    model = Siamese()
    inputs, how = infer_inputs(model, "model.py")
    assert len(inputs) == 2 and not torch.equal(*inputs) and "a and b" in how
    assert float(model(*inputs).abs().min()) > 0
