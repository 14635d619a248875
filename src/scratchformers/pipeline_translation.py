"""The translation pipeline that transformers 5 removed, back for any encoder-decoder model.

    translator = pipeline("translation", model=model_dir, trust_remote_code=True)
    translator("Hello world")                         # [{"translation_text": "..."}]
    translator(["a", "b"], batch_size=2, num_beams=4)  # [{"translation_text": ...}, {"translation_text": ...}]

It returns what transformers 4's ``TranslationPipeline`` returned:

| input             | num_return_sequences = 1       | num_return_sequences = n            |
|-------------------|--------------------------------|-------------------------------------|
| one string        | ``[{"translation_text": s}]``  | ``[{...}, ..., {...}]`` (n dicts)   |
| a list of strings | ``[{...}, {...}]`` (one each)  | ``[[n dicts], [n dicts]]``          |

Generation keyword arguments (``num_beams``, ``max_new_tokens``, ``do_sample``, ``top_p``, ...) are accepted when
the pipeline is built and at each call, and go to ``model.generate``. Inputs longer than the model accepts are
truncated with a warning; an empty (or blank) input translates to ``""``.

The model generates in its own dtype, so a saved model translates the same on every machine. ``autocast_bf16=True``
(at construction or per call) runs a float32 model under ``torch.autocast(<device>, dtype=torch.bfloat16)`` on a
CPU or a GPU that supports bf16 (``precision.py``; faster on some CPUs, slower on others: ``benchmarks/README.md``).

A tokenizer whose vocabulary does not fit the model, and weights holding NaN or inf, are refused when the pipeline
is built (``input_checks.py``), not translated silently.

This module imports nothing from its package but ``precision.py`` and ``input_checks.py``: saved checkpoints carry a
copy of them, which ``pipeline(..., trust_remote_code=True)`` loads where the package is not installed.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
from transformers import Pipeline
from transformers.utils import ModelOutput

from .input_checks import check_vocabulary_fits, check_weights_finite
from .precision import bf16_autocast

# Tokenizers without a length limit report this huge number as their ``model_max_length``.
_NO_LIMIT = int(1e20)


def translation_languages(task: Optional[str]) -> Optional[tuple[str, str]]:
    """``("en", "de")`` for the task name ``"translation_en_to_de"``, else None."""
    parts = (task or "").split("_")
    if len(parts) == 4 and parts[0] == "translation" and parts[2] == "to" and parts[1] and parts[3]:
        return parts[1], parts[3]
    return None


class TranslationPipeline(Pipeline):
    """Translate text with an encoder-decoder model (``AutoModelForSeq2SeqLM``) and its tokenizer.

    Pipeline parameters (at construction or per call), besides the generation ones:
        truncation: cut over-long inputs to the model's limit, with a warning (default ``True``); with ``False``
            the model raises its own error instead.
        return_tensors: return ``{"translation_token_ids": tensor}`` instead of text.
        clean_up_tokenization_spaces: passed to ``tokenizer.decode``.
        src_lang / tgt_lang: for multilingual tokenizers that build translation inputs themselves; the task name
            ``"translation_XX_to_YY"`` sets them to ``XX`` and ``YY``. Read back as ``src_lang`` / ``tgt_lang``.
        autocast_bf16: ``True``: generate under bf16 autocast (a float32 model on a CPU, or on a GPU that supports
            bf16); ``None`` (default) or ``False``: in the model's own dtype.
    """

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    return_name = "translation"
    src_lang: Optional[str] = None
    tgt_lang: Optional[str] = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError("TranslationPipeline needs a tokenizer: pass tokenizer=... or save one with the model.")
        if not getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"TranslationPipeline needs an encoder-decoder model (AutoModelForSeq2SeqLM); "
                f"{type(self.model).__name__} is not one."
            )
        # Refused now rather than translating silently to "" or to the same token over and over.
        check_vocabulary_fits(self.tokenizer, self.model.config)
        check_weights_finite(self.model)

    # ----------------------------------------------------------------------------------------------------------
    # Parameters
    # ----------------------------------------------------------------------------------------------------------
    def _sanitize_parameters(
        self,
        truncation: Optional[bool] = None,
        return_tensors: Optional[bool] = None,
        return_text: Optional[bool] = None,
        clean_up_tokenization_spaces: Optional[bool] = None,
        src_lang: Optional[str] = None,
        tgt_lang: Optional[str] = None,
        autocast_bf16: Optional[bool] = None,
        **generate_kwargs,
    ) -> tuple[dict, dict, dict]:
        """Split the keyword arguments into preprocess / forward (``generate``) / postprocess parameters."""
        preprocess_params: dict[str, Any] = {}
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        languages = translation_languages(getattr(self, "task", None))
        if languages is not None:  # pipeline("translation_en_to_de"): the languages come with the task name
            src_lang = languages[0] if src_lang is None else src_lang
            tgt_lang = languages[1] if tgt_lang is None else tgt_lang
        if src_lang is not None:
            preprocess_params["src_lang"] = self.src_lang = src_lang
        if tgt_lang is not None:
            preprocess_params["tgt_lang"] = self.tgt_lang = tgt_lang

        postprocess_params: dict[str, Any] = {}
        if return_tensors is not None and return_text is not None and return_tensors == return_text:
            raise ValueError("Pass either return_tensors=True or return_text=True, not both.")
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
        elif return_text is not None:
            postprocess_params["return_tensors"] = not return_text
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        forward_params = dict(generate_kwargs)
        if autocast_bf16 is not None:
            forward_params["autocast_bf16"] = autocast_bf16
        return preprocess_params, forward_params, postprocess_params

    def max_source_length(self) -> int:
        """The longest input, in tokens, that both the tokenizer and the model's position table accept."""
        limits = [getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length]
        limits = [limit for limit in limits if isinstance(limit, int) and 0 < limit < _NO_LIMIT]
        return min(limits) if limits else _NO_LIMIT

    # ----------------------------------------------------------------------------------------------------------
    # Call: a string or a list of strings
    # ----------------------------------------------------------------------------------------------------------
    def __call__(self, inputs: Union[str, list[str]], **kwargs):
        """Translate ``inputs``; see the module docstring for the shape of the result."""
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            return []
        result = super().__call__(inputs, **kwargs)
        # transformers 4 unwrapped the one-element lists of a list input.
        if isinstance(inputs, list) and all(isinstance(text, str) for text in inputs) and all(
            len(records) == 1 for records in result
        ):
            return [records[0] for records in result]
        return result

    def preprocess(
        self, text: str, truncation: bool = True, src_lang: Optional[str] = None, tgt_lang: Optional[str] = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize one input; cut it to ``max_source_length()`` tokens (with a warning) when it is longer."""
        if not isinstance(text, str):
            raise TypeError(f"TranslationPipeline translates strings, got {type(text).__name__}: {text!r}")
        source_is_empty = not text.strip()
        text = (getattr(self, "prefix", None) or "") + text  # e.g. T5's "translate English to German: "
        limit = self.max_source_length()
        encoded = self._tokenize(text, src_lang, tgt_lang, max_length=None)
        length = encoded["input_ids"].shape[-1]
        if length > limit and truncation:
            warnings.warn(
                f"The input has {length} tokens but the model accepts at most {limit}; it was truncated to {limit} "
                f"tokens (pass truncation=False to get an error instead): {text[:60]!r}...",
                UserWarning,
            )
            encoded = self._tokenize(text, src_lang, tgt_lang, max_length=limit)
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "source_is_empty": torch.tensor([source_is_empty]),
        }

    def _tokenize(self, text: str, src_lang: Optional[str], tgt_lang: Optional[str], max_length: Optional[int]):
        """Tokenize, truncating to ``max_length`` when given; multilingual tokenizers add their language codes."""
        truncation = max_length is not None
        build = getattr(self.tokenizer, "_build_translation_inputs", None)
        if build is not None and (src_lang is not None or tgt_lang is not None):
            return build(text, return_tensors="pt", truncation=truncation, max_length=max_length,
                         src_lang=src_lang, tgt_lang=tgt_lang)
        return self.tokenizer(text, return_tensors="pt", truncation=truncation, max_length=max_length)

    # ----------------------------------------------------------------------------------------------------------
    # Generation
    # ----------------------------------------------------------------------------------------------------------
    def _forward(
        self, model_inputs: dict[str, torch.Tensor], autocast_bf16: Optional[bool] = None, **generate_kwargs
    ) -> dict[str, torch.Tensor]:
        """``model.generate`` on a (padded) batch, under bf16 autocast where ``autocast_bf16`` says (see the class
        docstring); output ids come back as ``[batch, num_return_sequences, length]``."""
        prepared = self._prepare_generate_kwargs(generate_kwargs)
        set_params = self._get_set_generation_params(prepared)
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if "max_length" not in set_params and "max_new_tokens" not in set_params and max_positions:
            # generate()'s global default of 20 tokens cuts sentences; the decoder's position table is the real limit.
            prepared = self._prepare_generate_kwargs(generate_kwargs, max_length=max_positions)

        input_ids = model_inputs["input_ids"]
        with bf16_autocast(self.model, autocast_bf16):
            output = self.model.generate(input_ids=input_ids, attention_mask=model_inputs["attention_mask"], **prepared)
        output_ids = output.sequences if isinstance(output, ModelOutput) else output
        in_batch, out_batch = input_ids.shape[0], output_ids.shape[0]
        return {
            "output_ids": output_ids.reshape(in_batch, out_batch // in_batch, *output_ids.shape[1:]),
            "source_is_empty": model_inputs["source_is_empty"],
        }

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        return_tensors: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> list[dict[str, Any]]:
        """One record per returned sequence of one input: ``{"translation_text": str}`` (or token ids)."""
        source_is_empty = bool(model_outputs["source_is_empty"][0])
        records = []
        for output_ids in model_outputs["output_ids"][0]:
            if return_tensors:
                records.append({f"{self.return_name}_token_ids": output_ids[:0] if source_is_empty else output_ids})
            else:
                text = "" if source_is_empty else self.tokenizer.decode(
                    output_ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
                records.append({f"{self.return_name}_text": text})
        return records


__all__ = ["TranslationPipeline", "translation_languages"]
