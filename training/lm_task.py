"""``--task text-generation``: running text, a BPE tokenizer, blocks of ``--block_size`` tokens packed as
Hugging Face's ``run_clm.py`` packs them, the decoder-only Transformer and its Trainer; held-out perplexity from
the plain negative log-likelihood beside unigram / bigram baselines measured on the same tokens, and a few
continuations of test text sampled through the saved model's ``pipeline("text-generation")``."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import transformers
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

from scratchformers import train_tokenizer
from scratchformers.configuration_causal_lm import ScratchTransformerLMConfig
from scratchformers.data import check_block_size, group_texts, load_text_dataset
from scratchformers.tokenization import check_tokenizer_matches

from model_card import CARD_TASKS, CardTask
from output_dir import resolve_resume
from task_setup import Job, build_model, refuse_image_augmentation, select_samples, trainer_datasets
from trainer import ScratchTrainer

logger = logging.getLogger(__name__)

# Architecture presets (``--model_size``); ``--config_overrides "d_model=128,num_hidden_layers=2"`` edits any field.
# Pre-norm with a final norm, learned positions, GELU, tied embeddings: GPT-2's shape, smaller.
LM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256, dropout=0.0,
                 attention_dropout=0.0, init_std=0.02),
    # Sized for a 2-core CPU: small enough for the default run to read the Bible's training books several times
    # in its time budget (compute-optimal sizing favours a small model on many tokens); no dropout.
    "small": dict(d_model=128, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512, dropout=0.0,
                  attention_dropout=0.0, init_std=0.02),
    # GPT-2 small's architecture.
    "base": dict(d_model=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072, dropout=0.1,
                 attention_dropout=0.1, init_std=0.02),
}
# Sampling settings saved in the model's generation config: what the pipeline uses by default.
SAMPLING = dict(do_sample=True, top_k=50, top_p=0.95, temperature=0.8, max_new_tokens=60)
PROMPT_WORDS = 4  # the samples continue the first words of test passages


class ScratchLMTrainer(ScratchTrainer):
    """Every evaluation also reports ``<prefix>_perplexity = exp(<prefix>_loss)``: the model's eval-mode loss is
    the plain negative log-likelihood per predicted token (``modeling_base.model_cross_entropy``), and every
    block has the same number of predicted tokens, so the Trainer's mean over blocks is the mean over tokens."""

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        for key in [key for key in output.metrics if key.endswith("_loss")]:
            output.metrics[key.removesuffix("_loss") + "_perplexity"] = math.exp(min(output.metrics[key], 700.0))
        return output


# --------------------------------------------------------------------------------------------------------------
# Tokens and blocks
# --------------------------------------------------------------------------------------------------------------
def get_lm_tokenizer(model_args, train_texts: Sequence[str], block_size: int, resume_from: Optional[str]):
    """The checkpoint's tokenizer when resuming, a given one, or a new byte-level BPE trained on the training text."""
    source = resume_from or model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        logger.info(f"Loading the tokenizer from {source}")
        return AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir)
    logger.info(f"Training a {model_args.vocab_size}-token BPE tokenizer on {len(train_texts)} training texts")
    tokenizer = train_tokenizer(train_texts, vocab_size=model_args.vocab_size, model_max_length=block_size)
    # Encoding adds nothing, as GPT-2's tokenizer: pipeline("text-generation") encodes a prompt with the tokenizer's
    # defaults, and a prompt ending in </s> would be continued as a new text. The packing adds </s> between rows.
    tokenizer.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def tokenize_and_pack(raw, tokenizer, block_size: int, data_args, training_args) -> dict:
    """Each row's tokens followed by the end-of-text token (the boundary between verses, paragraphs or documents,
    as GPT-2's ``<|endoftext|>``), then ``group_texts`` blocks: split -> dataset of ``input_ids`` / ``labels``."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def tokenize(batch: dict) -> dict:
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]  # rows longer than a block are packed
        return {"input_ids": [row + eos for row in ids]}

    packed = {}
    with training_args.main_process_first(desc="tokenizing and packing"):
        for split, ds in raw.items():
            tokens = ds.map(tokenize, batched=True, num_proc=data_args.preprocessing_num_workers,
                            remove_columns=ds.column_names, load_from_cache_file=not data_args.overwrite_cache,
                            desc=f"Tokenizing {split}")
            packed[split] = tokens.map(group_texts, batched=True, fn_kwargs={"block_size": block_size},
                                       num_proc=data_args.preprocessing_num_workers,
                                       load_from_cache_file=not data_args.overwrite_cache,
                                       desc=f"Packing {split} into blocks of {block_size}")
            if len(packed[split]) == 0:
                raise ValueError(f"The {split} text has fewer than --block_size {block_size} tokens: it packs into no "
                                 f"block. Give more text, or a smaller --block_size.")
    return packed


# --------------------------------------------------------------------------------------------------------------
# The baseline: unigram and interpolated bigram models of the same tokens
# --------------------------------------------------------------------------------------------------------------
class BigramBaseline:
    """Count-based language models of the training tokens, scored on exactly the tokens the Transformer predicts
    (every token of a block but the first, from the previous token of the same block).

    unigram: ``p(w) = (c(w) + 1) / (N + V)`` (add-one, so no held-out token has probability 0);
    bigram: ``p(w | v) = λ c(v, w) / c(v) + (1 − λ) p_unigram(w)`` (Jelinek-Mercer interpolation; ``λ`` is
    chosen on the validation blocks, then the test blocks are scored).
    """

    LAMBDAS = tuple(i / 20 for i in range(20))  # 0.0 ... 0.95

    def __init__(self, train_blocks: Iterable[Sequence[int]], vocab_size: int):
        self.vocab_size = vocab_size
        self.unigrams: Counter = Counter()
        self.bigrams: Counter = Counter()
        self.contexts: Counter = Counter()
        for block in train_blocks:
            self.unigrams.update(block[1:])
            pairs = list(zip(block[:-1], block[1:]))
            self.bigrams.update(pairs)
            self.contexts.update(previous for previous, _ in pairs)
        self.total = sum(self.unigrams.values())
        self.interpolation = 0.0

    def unigram(self, token: int) -> float:
        return (self.unigrams[token] + 1) / (self.total + self.vocab_size)

    def bigram(self, previous: int, token: int, interpolation: Optional[float] = None) -> float:
        weight = self.interpolation if interpolation is None else interpolation
        seen = self.contexts[previous]
        conditional = self.bigrams[(previous, token)] / seen if seen else 0.0
        return weight * conditional + (1.0 - weight) * self.unigram(token)

    def perplexity(self, blocks: Iterable[Sequence[int]], model: str = "bigram",
                   interpolation: Optional[float] = None) -> float:
        """``exp`` of the mean negative log-likelihood of every predicted token of ``blocks``."""
        total, count = 0.0, 0
        for block in blocks:
            for previous, token in zip(block[:-1], block[1:]):
                probability = self.unigram(token) if model == "unigram" else self.bigram(previous, token, interpolation)
                total -= math.log(probability)
                count += 1
        return math.exp(total / count)

    def fit_interpolation(self, validation_blocks: Sequence[Sequence[int]]) -> float:
        self.interpolation = min(self.LAMBDAS, key=lambda weight: self.perplexity(validation_blocks, "bigram", weight))
        return self.interpolation

    def results(self, validation_blocks: Sequence[Sequence[int]], test_blocks: Sequence[Sequence[int]]) -> dict:
        """``{eval,test}_{unigram,bigram}_perplexity`` and the chosen ``bigram_interpolation``."""
        results = {"bigram_interpolation": self.fit_interpolation(validation_blocks)}
        for prefix, blocks in (("eval", validation_blocks), ("test", test_blocks)):
            for model in ("unigram", "bigram"):
                results[f"{prefix}_{model}_perplexity"] = self.perplexity(blocks, model)
        return results


# --------------------------------------------------------------------------------------------------------------
# The model and the job
# --------------------------------------------------------------------------------------------------------------
def build_lm(model_args, block_size: int, tokenizer, resume_from: Optional[str]):
    def new_config() -> ScratchTransformerLMConfig:
        return ScratchTransformerLMConfig(
            **LM_PRESETS[model_args.model_size], vocab_size=len(tokenizer), max_position_embeddings=max(block_size, 256),
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        )

    model = build_model(AutoModelForCausalLM, model_args, resume_from, new_config)
    if model.config.max_position_embeddings < block_size and model.config.position_embedding != "rotary":
        raise ValueError(f"--block_size {block_size} is longer than the model's max_position_embeddings "
                         f"{model.config.max_position_embeddings}: pass a --block_size of at most that.")
    check_tokenizer_matches(tokenizer, model.config)
    return model


def prepare_text_generation(model_args, data_args, training_args, last_checkpoint) -> Job:
    """Text, tokenizer, blocks, baseline, model and trainer for language modelling; bad input raises here."""
    refuse_image_augmentation(data_args, "text-generation")
    block_size = data_args.block_size
    check_block_size(block_size)
    with training_args.main_process_first(desc="loading the dataset"):
        raw = load_text_dataset(data_args.dataset_name, data_args.dataset_config_name, data_args.train_file,
                                data_args.validation_file, data_args.test_file, cache_dir=model_args.cache_dir,
                                text_column=data_args.text_column)
    raw = select_samples(raw, data_args)
    resume_from = resolve_resume(training_args, last_checkpoint)
    tokenizer = get_lm_tokenizer(model_args, raw["train"]["text"], block_size, resume_from)
    model = build_lm(model_args, block_size, tokenizer, resume_from)
    model.generation_config.update(**SAMPLING, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    logger.info(f"Model: {model.num_parameters():,} parameters, vocabulary {model.config.vocab_size}")
    packed = tokenize_and_pack(raw, tokenizer, block_size, data_args, training_args)
    logger.info(", ".join(f"{split}: {len(ds):,} blocks of {block_size} tokens" for split, ds in packed.items()))

    trainer = ScratchLMTrainer(
        model=model, args=training_args, **trainer_datasets(packed, training_args), processing_class=tokenizer,
        data_collator=default_data_collator,
    )

    def report(results: dict, model_dir: str) -> list[dict]:
        baseline = BigramBaseline(packed["train"]["input_ids"], len(tokenizer)).results(
            packed["validation"]["input_ids"], packed["test"]["input_ids"])
        results.update(baseline)
        trainer.save_metrics("baseline", baseline)
        for prefix, name in (("test", "Held-out test"), ("eval", "Validation")):
            if results.get(f"{prefix}_perplexity") is not None:
                print(f"{name} ({len(packed['test' if prefix == 'test' else 'validation']) * (block_size - 1):,} "
                      f"predicted tokens): perplexity {results[f'{prefix}_perplexity']:.2f}; baselines on the same "
                      f"tokens: bigram {results[f'{prefix}_bigram_perplexity']:.2f}, unigram "
                      f"{results[f'{prefix}_unigram_perplexity']:.2f}")
        return text_samples(model_dir, raw["test"], data_args.num_samples, training_args.seed)

    # The Trainer turns the KV cache off for training (args.use_cache); the saved model generates with it.
    return Job(trainer, raw, packed, resume_from, report, saved_config={"use_cache": True})


def text_samples(model_dir: str, test_dataset, count: int, seed: int) -> list[dict]:
    """Continue the first words of a few test passages (spread over the test text) through
    ``pipeline("text-generation", model=model_dir)``, with the sampling settings saved in the model, and print
    them beside the passage's own text."""
    if count <= 0 or len(test_dataset) == 0:
        return []
    step = max(1, len(test_dataset) // count)
    rows = [test_dataset[i]["text"] for i in range(0, len(test_dataset), step)][:count]
    prompts = [" ".join(text.split()[:PROMPT_WORDS]) for text in rows]
    generator = transformers.pipeline("text-generation", model=model_dir, trust_remote_code=True)
    transformers.set_seed(seed)
    outputs = generator(prompts)
    samples = []
    print(f"\nSamples (pipeline('text-generation', model='{model_dir}', trust_remote_code=True), sampled):")
    for prompt, text, output in zip(prompts, rows, outputs):
        generated = output[0]["generated_text"]
        samples.append({"prompt": prompt, "reference": text, "generated": generated})
        print(f"  prompt:    {prompt}\n  reference: {text}\n  model:     {generated}\n")
    return samples


CARD_TASKS["text-generation"] = CardTask(
    task_name="Text Generation",
    default_dataset="embedded:bible",
    summary="A from-scratch decoder-only Transformer language model (GPT), trained on `{dataset}`.",
    metrics={"perplexity": ("perplexity", ".2f"), "bigram_perplexity": ("bigram baseline perplexity", ".2f"),
             "unigram_perplexity": ("unigram baseline perplexity", ".2f")},
    architecture=(
        ("architecture", "decoder-only Transformer (ScratchTransformerForCausalLM)"),
        ("parameters", "{parameters:,}"), ("d_model", "{config.d_model}"), ("layers", "{config.num_hidden_layers}"),
        ("attention heads", "{config.num_attention_heads}"), ("feed-forward dim", "{config.ffn_dim}"),
        ("vocabulary (byte-level BPE)", "{config.vocab_size}"), ("positional encoding", "{config.position_embedding}"),
        ("norm", "{config.norm_type}, {config.norm_position}-norm"), ("activation", "{config.activation_function}"),
        ("tied embeddings", "{config.tie_word_embeddings}"),
    ),
    usage="""from transformers import pipeline

generator = pipeline("text-generation", model={model_id!r}, trust_remote_code=True)
print(generator("In the beginning", max_new_tokens=40))""",
    samples_title="Sample continuations of test passages",
    sample_columns=(("prompt", "{prompt}"), ("model", "{generated}"), ("the passage", "{reference}")),
    hyperparameters=(("block size (tokens)", "{data_args.block_size}"),),
)
