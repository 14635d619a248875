"""Translation quality: ours and Hugging Face's MarianMTModel trained with the identical recipe, same BLEU/chrF.

    python benchmarks/bench_quality.py                       # default budget: a few minutes on a 2-core CPU
    python benchmarks/bench_quality.py --steps 3000 --d-model 256 --layers 3 --eval-samples 285 --beams 4

Recipe, identical for both models:
- data: ``embedded:bible`` English -> German through ``scratchformers.data.load_translation_dataset`` (the split
  training uses: whole books held out; test = Joel, Philippians, James);
- tokenizer: one byte-level BPE (``scratchformers.tokenization.train_tokenizer``) trained on the training split,
  shared by both models; sources and targets truncated to ``--max-len`` tokens;
- architecture: post-norm encoder-decoder (Marian's only layout), sinusoidal positions, embeddings × √d_model,
  ``--d-model``/``--layers``/``--heads``/``--ffn``, activation ``--activation``, dropout 0.1, tied embeddings;
  both decoders start from ``<s>``. ``--init native`` (default): each model initialised its own way from the same
  seed; ``--init port``: ours starts from exactly Marian's initial weights (``marian_to_scratch``, positions frozen
  as in Marian);
- training: the same batches in the same order (seeded shuffle), ``--steps`` steps of ``--batch`` pairs, AdamW
  (β = 0.9, 0.98, weight decay 0.01), linear warm-up then inverse square-root decay of ``--lr``, label-smoothed
  (0.1) cross-entropy computed by the same function on both models' logits, gradient clipping at 1.0, same seed;
- evaluation: greedy (``--beams 1``) or beam search on the first ``--eval-samples`` test pairs, sacrebleu corpus
  BLEU and chrF on the detokenised outputs.

The last line of the output is one JSON object ``{"bleu_ours", "bleu_hf", "chrf_ours", "chrf_hf", ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import loadavg, machine  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_data(args):
    from scratchformers.data import load_translation_dataset

    raw, source_lang, target_lang = load_translation_dataset("embedded:bible", source_lang=args.source_lang,
                                                             target_lang=args.target_lang)
    train, test = raw["train"], raw["test"]
    if args.train_samples:
        train = train.select(range(min(args.train_samples, len(train))))
    test = test.select(range(min(args.eval_samples, len(test))))
    return train, test, source_lang, target_lang


def build_models(args, tokenizer):
    from transformers import MarianConfig, MarianMTModel

    from scratchformers import ScratchTransformerConfig, ScratchTransformerForConditionalGeneration
    from scratchformers.convert import marian_to_scratch

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               decoder_start_token_id=tokenizer.bos_token_id)
    marian_config = MarianConfig(
        vocab_size=len(tokenizer), d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
        encoder_attention_heads=args.heads, decoder_attention_heads=args.heads, encoder_ffn_dim=args.ffn,
        decoder_ffn_dim=args.ffn, activation_function=args.activation, dropout=0.1, attention_dropout=0.0,
        activation_dropout=0.0, max_position_embeddings=args.max_len + 2, scale_embedding=True, init_std=0.02,
        **ids,
    )
    torch.manual_seed(args.seed)
    hf = MarianMTModel._from_config(marian_config, attn_implementation="sdpa")
    if args.init == "port":
        ours = marian_to_scratch(hf).train()
        for stack in (ours.model.encoder, ours.model.decoder):
            stack.embeddings.embed_positions.weight.requires_grad_(False)  # Marian's table is fixed
        ours.lm_head.bias.requires_grad_(False)  # Marian's final_logits_bias is a buffer
    else:
        config = ScratchTransformerConfig(
            vocab_size=len(tokenizer), d_model=args.d_model, encoder_layers=args.layers, decoder_layers=args.layers,
            encoder_attention_heads=args.heads, decoder_attention_heads=args.heads, ffn_dim=args.ffn,
            activation_function={"swish": "silu"}.get(args.activation, args.activation), dropout=0.1,
            attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=args.max_len + 2,
            position_embedding="sinusoidal", scale_embedding=True, norm_type="layernorm", norm_position="post",
            tie_word_embeddings=True, init_std=0.02, bos_token_id=tokenizer.bos_token_id, **ids,
        )
        torch.manual_seed(args.seed)
        ours = ScratchTransformerForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    for model in (ours, hf):
        model.generation_config.bad_words_ids = None
        model.generation_config.forced_eos_token_id = None
    return ours, hf


def batches(train, tokenizer, args):
    """The same list of padded batches for both models: a seeded shuffle, ``--steps`` batches of ``--batch``."""
    generator = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    while len(order) < args.steps * args.batch:
        order += torch.randperm(len(train), generator=generator).tolist()
    result = []
    for step in range(args.steps):
        rows = train.select(order[step * args.batch : (step + 1) * args.batch])
        encoded = tokenizer(list(rows["source"]), text_target=list(rows["target"]), max_length=args.max_len, truncation=True,
                            padding=True, return_tensors="pt")
        encoded["labels"] = encoded["labels"].masked_fill(encoded["labels"] == tokenizer.pad_token_id, -100)
        result.append(encoded)
    return result


def learning_rate(step: int, args) -> float:
    """Linear warm-up to ``--lr`` over ``--warmup`` steps, then ∝ 1/√step (the paper's schedule, rescaled)."""
    step = step + 1
    return args.lr * min(step / args.warmup, math.sqrt(args.warmup / step))


def train(model, data, args) -> dict:
    torch.manual_seed(args.seed)  # same dropout seed for both
    model.train()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    start, cpu_start, losses = time.perf_counter(), time.process_time(), []
    for step, batch in enumerate(data):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        # Both models get decoder inputs from labels the same way (shift right, start token, -100 -> pad).
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       decoder_input_ids=model.prepare_decoder_input_ids_from_labels(batch["labels"])).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(),
                                                 ignore_index=-100, label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tail = losses[-max(1, len(losses) // 10):]
    return {"final_loss": round(sum(tail) / len(tail), 4), "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1)}


@torch.inference_mode()
def translate(model, tokenizer, sources: list[str], args) -> list[str]:
    model.eval()
    outputs = []
    for i in range(0, len(sources), args.eval_batch):
        encoded = tokenizer(sources[i : i + args.eval_batch], max_length=args.max_len, truncation=True, padding=True,
                            return_tensors="pt")
        generated = model.generate(**encoded, num_beams=args.beams, max_new_tokens=args.max_len, do_sample=False)
        outputs += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return outputs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-lang", default="en")
    parser.add_argument("--target-lang", default="de")
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--max-len", type=int, default=48, help="tokens kept per source / target")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3, help="encoder layers = decoder layers")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--activation", default="relu", choices=["relu", "gelu", "swish"])
    parser.add_argument("--init", choices=["native", "port"], default="native")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--train-samples", type=int, default=0, help="0: the whole training split")
    parser.add_argument("--eval-samples", type=int, default=150)
    parser.add_argument("--eval-batch", type=int, default=50)
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run for the test suite")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab, args.max_len, args.d_model, args.layers, args.heads, args.ffn = 300, 16, 32, 1, 2, 64
        args.steps, args.batch, args.warmup, args.train_samples, args.eval_samples = 3, 4, 2, 400, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    import sacrebleu

    from scratchformers.tokenization import train_tokenizer

    start = time.perf_counter()
    train_split, test_split, source_lang, target_lang = load_data(args)
    tokenizer = train_tokenizer((t for col in ("source", "target") for t in train_split[col]), vocab_size=args.vocab,
                                model_max_length=args.max_len)
    ours, hf = build_models(args, tokenizer)
    data = batches(train_split, tokenizer, args)
    report: dict = {"pair": f"{source_lang}-{target_lang}", "train_pairs": len(train_split),
                    "test_pairs": len(test_split), "vocab": len(tokenizer), "init": args.init, "steps": args.steps,
                    "batch": args.batch, "d_model": args.d_model, "layers": args.layers, "beams": args.beams}
    sources, references = list(test_split["source"]), list(test_split["target"])
    for name, model in (("ours", ours), ("hf", hf)):
        report[f"train_{name}"] = train(model, data, args)
        hypotheses = translate(model, tokenizer, sources, args)
        report[f"bleu_{name}"] = round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2)
        report[f"chrf_{name}"] = round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2)
        report[f"sample_{name}"] = hypotheses[0][:120]
    report["reference"] = references[0][:120]
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["load_avg"] = loadavg()
    report["device"] = machine()
    print(json.dumps(report, ensure_ascii=False))
    return report


if __name__ == "__main__":
    main()
