"""``--task translation``: the parallel corpus, a BPE tokenizer, the encoder-decoder Transformer and its
Seq2SeqTrainer, and a few test sentences translated through the saved model's pipeline."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

import torch
import transformers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from scratchformers import ScratchTransformerConfig, train_tokenizer
from scratchformers.data import load_translation_dataset
from scratchformers.metrics import translation_compute_metrics
from scratchformers.tokenization import check_tokenizer_matches

from output_dir import resolve_resume
from task_setup import Job, build_model, refuse_image_augmentation, select_samples, trainer_datasets
from trainer import ScratchSeq2SeqTrainer

logger = logging.getLogger(__name__)

# Architecture presets (``--model_size``); ``--config_overrides "d_model=128,encoder_layers=2"`` edits any field.
# Weights start at std d_model^-0.5 (the paper's embedding init): after the × √d_model embedding scale, tokens weigh
# as much as the sinusoidal positions. With transformers' usual 0.02 the positions drown the tokens in small models
# and the Bible run needs about twice the steps to start translating.
TRANSLATION_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, ffn_dim=128, norm_position="pre", dropout=0.1, init_std=0.125),
    # Sized for a 2-core CPU: the default run learns the Bible corpus's en->de in under 15 minutes. It sees the
    # corpus under three times, far from overfitting it: dropout only slowed learning (training/RECIPES.md).
    "small": dict(d_model=128, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, ffn_dim=512, norm_position="pre", dropout=0.0, init_std=0.088),
    # The paper's base model.
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, ffn_dim=2048, norm_position="post", dropout=0.1, init_std=0.044),
}


def get_tokenizer(model_args, data_args, train_dataset, resume_from: Optional[str]):
    """The checkpoint's tokenizer when resuming, a given one, or a new BPE trained on the training split."""
    source = resume_from or model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        logger.info(f"Loading the tokenizer from {source}")
        return AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir)
    logger.info(f"Training a {model_args.vocab_size}-token BPE tokenizer on {len(train_dataset)} training pairs")
    texts = (text for column in ("source", "target") for text in train_dataset[column])
    tokenizer = train_tokenizer(
        texts, vocab_size=model_args.vocab_size,
        model_max_length=max(data_args.max_source_length, data_args.max_target_length),
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every process trains the same tokenizer (BPE training is deterministic); make sure of it.
        digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        digests = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError("The processes trained different tokenizers; pass --tokenizer_name.")
    return tokenizer


def build_translation_model(model_args, data_args, tokenizer, resume_from: Optional[str]):
    def new_config() -> ScratchTransformerConfig:
        return ScratchTransformerConfig(
            **TRANSLATION_PRESETS[model_args.model_size],
            vocab_size=len(tokenizer),
            max_position_embeddings=max(512, data_args.max_source_length, data_args.max_target_length),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.bos_token_id,
        )

    model = build_model(AutoModelForSeq2SeqLM, model_args, resume_from, new_config)
    check_tokenizer_matches(tokenizer, model.config)
    return model


def prepare_translation(model_args, data_args, training_args, last_checkpoint) -> Job:
    """Data, tokenizer, model and trainer for translation; every bad input raises here, before training."""
    refuse_image_augmentation(data_args, "translation")
    with training_args.main_process_first(desc="loading the dataset"):
        raw, source_lang, target_lang = load_translation_dataset(
            data_args.dataset_name, data_args.dataset_config_name, data_args.source_lang, data_args.target_lang,
            data_args.train_file, data_args.validation_file, data_args.test_file, cache_dir=model_args.cache_dir,
        )
    data_args.source_lang, data_args.target_lang = source_lang, target_lang
    raw = select_samples(raw, data_args)
    resume_from = resolve_resume(training_args, last_checkpoint)
    tokenizer = get_tokenizer(model_args, data_args, raw["train"], resume_from)
    model = build_translation_model(model_args, data_args, tokenizer, resume_from)
    if data_args.num_beams:
        num_beams = data_args.num_beams
    elif model_args.model_name_or_path:
        num_beams = model.generation_config.num_beams or 1
    else:
        num_beams = 4
    model.generation_config.num_beams = num_beams
    model.generation_config.max_length = data_args.max_target_length
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = num_beams
    final_generation = {"num_beams": num_beams}
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length
    logger.info(f"Model: {model.num_parameters():,} parameters, vocabulary {model.config.vocab_size}")

    def preprocess(batch: dict) -> dict:
        inputs = tokenizer(batch["source"], max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(text_target=batch["target"], max_length=data_args.max_target_length, truncation=True)
        inputs["labels"] = labels["input_ids"]
        return inputs

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = {
            split: ds.map(
                preprocess, batched=True, num_proc=data_args.preprocessing_num_workers,
                remove_columns=ds.column_names, load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenizing {split}",
            )
            for split, ds in raw.items()
        }

    data_collator = DataCollatorForSeq2Seq(
        tokenizer, model=model, label_pad_token_id=-100,
        pad_to_multiple_of=8 if (training_args.fp16 or training_args.bf16) else None,
    )
    trainer = ScratchSeq2SeqTrainer(
        model=model,
        args=training_args,
        **trainer_datasets(tokenized, training_args),
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=translation_compute_metrics(tokenizer, target_lang)
        if training_args.predict_with_generate else None,
    )

    def report(results: dict, model_dir: str) -> list[dict]:
        samples = translation_samples(model_dir, raw["test"], data_args.num_samples)
        if results.get("test_bleu") is not None:
            pair = f"{source_lang}->{target_lang}, " if source_lang and target_lang else ""
            print(f"Held-out test ({pair}{len(raw['test'])} pairs): "
                  f"BLEU {results['test_bleu']:.2f}, chrF {results['test_chrf']:.2f}")
        if results.get("eval_bleu") is not None:
            print(f"Validation ({len(raw['validation'])} pairs): BLEU {results['eval_bleu']:.2f}, "
                  f"chrF {results['eval_chrf']:.2f}")
        return samples

    # The Trainer turns the KV cache off for training (args.use_cache); the saved model generates with it.
    return Job(trainer, raw, tokenized, resume_from, report, saved_config={"use_cache": True},
               final_eval_kwargs=final_generation)


def translation_samples(model_dir: str, test_dataset, count: int) -> list[dict]:
    """Translate a few test sentences through ``pipeline("translation", model=model_dir)`` and print them."""
    if count <= 0 or len(test_dataset) == 0:
        return []
    examples = test_dataset.select(range(min(count, len(test_dataset))))
    translator = transformers.pipeline("translation", model=model_dir, trust_remote_code=True)
    outputs = translator(list(examples["source"]))
    samples = []
    print(f"\nSample translations (pipeline('translation', model='{model_dir}', trust_remote_code=True)):")
    for example, output in zip(examples, outputs):
        hypothesis = output["translation_text"]
        samples.append({"source": example["source"], "reference": example["target"], "prediction": hypothesis})
        print(f"  source:    {example['source']}\n  reference: {example['target']}\n  model:     {hypothesis}\n")
    return samples
