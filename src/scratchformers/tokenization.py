"""A joint source/target subword tokenizer trained with `tokenizers`, returned as a transformers fast tokenizer.

Byte-level BPE: every string (any script, emoji, odd whitespace) is representable without ``<unk>``, and
``decode(encode(text)) == text`` exactly, because no prefix space is added and no text is normalised.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    model_max_length: int = 512,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (source and target sentences together).

    Special tokens get the ids the model config expects: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3.
    Every encoded sequence ends with ``</s>``. ``tok(src, text_target=tgt)`` yields ``labels``.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level tokenizer: it needs at least "
            f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)."
        )
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )

    def non_empty() -> Iterator[str]:
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"train_tokenizer expects strings, got {type(text).__name__}: {text!r}")
            if text:
                yield text

    tokenizer.train_from_iterator(non_empty(), trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="right",
        **SPECIAL_TOKENS,
    )


def check_tokenizer_matches(tokenizer, config) -> None:
    """Raise a clear error when a tokenizer cannot feed a model: ids beyond the vocabulary or other special ids."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: ids past "
            f"{config.vocab_size - 1} have no embedding. Use the tokenizer saved with this model."
        )
    for name in ("pad_token_id", "eos_token_id"):
        tok_id: Optional[int] = getattr(tokenizer, name, None)
        cfg_id = getattr(config, name, None)
        if tok_id is not None and cfg_id is not None and tok_id != cfg_id:
            raise ValueError(
                f"Tokenizer {name}={tok_id} differs from the model config's {name}={cfg_id}. Use the tokenizer saved "
                "with this model, or set the config's ids to the tokenizer's."
            )


__all__ = ["train_tokenizer", "check_tokenizer_matches", "SPECIAL_TOKENS"]
