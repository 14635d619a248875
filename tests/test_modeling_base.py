"""The loss every model returns (``modeling_base.model_cross_entropy``): label smoothing while training only, the
plain negative log-likelihood in eval mode, so that ``eval_loss`` and ``exp(loss)`` mean what they do on native
Hugging Face models."""

import pytest
import torch
from torch import nn

import scratchformers as sf
from conftest import tiny_transformer_config
from vit_fixtures import pixels, tiny_vit


def seq2seq_loss_and_logits(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    return out.loss, out.logits


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_seq2seq_loss_is_plain_nll_in_eval_mode_and_smoothed_in_train_mode(padded_batch, implementation):
    torch.manual_seed(0)
    config = tiny_transformer_config(label_smoothing=0.1, forward_implementation=implementation)
    model = sf.ScratchTransformerForConditionalGeneration(config)
    labels = padded_batch["decoder_input_ids"].clone()
    labels[0, 3:] = -100
    batch = dict(padded_batch, labels=labels)
    eval_loss, logits = seq2seq_loss_and_logits(model.eval(), batch)
    flat_logits, flat_labels = logits.flatten(0, 1), labels.flatten()
    torch.testing.assert_close(eval_loss, nn.functional.cross_entropy(flat_logits, flat_labels))
    train_loss, _ = seq2seq_loss_and_logits(model.train(), batch)  # dropout 0: only the loss changes
    smoothed = nn.functional.cross_entropy(flat_logits, flat_labels, label_smoothing=0.1)
    torch.testing.assert_close(train_loss, smoothed)
    assert not torch.isclose(train_loss, eval_loss)


@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_vit_loss_is_plain_nll_in_eval_mode_and_smoothed_in_train_mode(implementation):
    model = tiny_vit(label_smoothing=0.1, forward_implementation=implementation)
    labels = torch.tensor([2, -100, 0])
    images = pixels(batch=3)
    out = model.eval()(images, labels=labels)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
    trained = model.train()(images, labels=labels).loss
    torch.testing.assert_close(trained, nn.functional.cross_entropy(out.logits, labels, label_smoothing=0.1))


def test_the_trainers_eval_loss_is_the_plain_nll(tmp_path, padded_batch):
    """A model trained with label smoothing 0.1 reports the plain cross-entropy as ``eval_loss``: its exponential
    is the perplexity."""
    from datasets import Dataset
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    torch.manual_seed(0)
    model = sf.ScratchTransformerForConditionalGeneration(tiny_transformer_config(label_smoothing=0.1))
    rows = {"input_ids": padded_batch["input_ids"].tolist(), "attention_mask": padded_batch["attention_mask"].tolist(),
            "labels": padded_batch["decoder_input_ids"].tolist()}
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                    per_device_eval_batch_size=8)
    metrics = Seq2SeqTrainer(model=model, args=args).evaluate(Dataset.from_dict(rows))
    with torch.no_grad():
        logits = model.eval()(input_ids=padded_batch["input_ids"], attention_mask=padded_batch["attention_mask"],
                              decoder_input_ids=model.prepare_decoder_input_ids_from_labels(
                                  padded_batch["decoder_input_ids"])).logits
    plain = nn.functional.cross_entropy(logits.flatten(0, 1), padded_batch["decoder_input_ids"].flatten())
    assert metrics["eval_loss"] == pytest.approx(plain.item(), rel=1e-5)
