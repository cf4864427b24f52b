"""Measure real runtime traces on a CUDA GPU, for the examples and the accuracy benchmark.

Not part of the service, and not run by the tests: it needs a CUDA GPU, PyTorch and
torchvision, which the service does not depend on. Weights are random (the machine that
ran it had no network); a forward pass costs the same whatever the weights hold.

Eight workloads, each run for a fixed wall-clock budget, one trace per request, written
to ``OUT/<gpu>_<workload>.jsonl`` as soon as it is measured (a run starts each file anew):

* ``resnet50_vision``: torchvision's ResNet-50 in fp16, channels-last, with cuDNN's
  autotuner on. A request is a batch of
  uint8 images copied from pinned memory, normalised on the GPU, classified, and its
  labels copied back. Batches are padded to a power of two (1-64) as servers bucket
  them, and the image side is one of six (128-512): each of the 42 shapes pays the
  autotuner the first time it runs (about a second on an H200 with cuDNN 9.19), the
  bimodal "first occurrence of a shape" runtimes of real GPU traces.
* ``llm_decode``: a 6-layer, 2048-wide decoder (0.44B parameters, bf16) with a KV
  cache, greedy decoding, the next token read back after every step as a streaming
  server does. The trace has what a scheduler knows before the request runs:
  ``input_tokens`` and ``max_tokens``. How many tokens the request produces is hidden,
  as it is for a chat server: drawn from a lognormal (median 50, log-sd 0.9) capped at
  ``max_tokens``, and 3% of requests are aborted by their client after 1-8 tokens.
  Random weights never choose when to stop, so this draw stands in for the model's.
* ``text_encoder``: a BERT-base-sized encoder (12 layers, 768 wide, bf16) embedding a
  batch of 1-64 texts of lognormal lengths (median 60 tokens, at most 512), padded to
  the longest; the trace has ``batch_size``, ``seq_len`` (the padded length) and
  ``tokens`` (the real ones).

Three more, measured later on a fresh machine as trace sets the modelling had never seen:

* ``t2img_diffusion``: text-to-image, a DiT-style latent denoiser (12 layers, 768 wide,
  bf16, cross-attention to 77 text tokens) run for ``steps`` steps at ``height`` x
  ``width`` (seven sizes, 512-1024) for ``num_images`` images, then a convolutional VAE
  decoder (fp16). ``guidance_scale`` above 1 doubles every step's batch (classifier-free
  guidance), at 1 it does not: a feature that matters only past a threshold.
* ``asr_speech``: speech recognition, a Whisper-base-sized encoder-decoder (6 + 6 layers,
  512 wide, bf16): every 30-second window of ``audio_seconds`` is encoded and decoded
  greedily, one read-back per token, windows in turn. Hidden, as from a scheduler: how
  much of the audio is speech (a beta draw), how fast the speaker talks (lognormal, log-sd
  0.25), and the 1% of windows that fall into Whisper's repetition loop and run to its
  448-token cap; ``language`` sets the tokens per second of speech (Whisper's tokenizer
  spends more on Chinese and Japanese).
* ``ocr_document``: document OCR, text detection on whole pages (a ResNet-18 trunk, fp16,
  at the page's ``dpi``, long side at most 2,560 pixels, pages padded to a power of two)
  and recognition of every text line (a CRNN: convolutions and a 2-layer BiLSTM, batches
  of 32 crops in six width buckets). Hidden: what is on the pages (blank, forms, prose,
  dense tables: 1 to 80 lines each), which sets the recognition work; ``file_kb`` follows
  the ink loosely, as a scanned file's size does.

Two more, measured after those on a fresh machine:

* ``tts_speech``: text-to-speech, a Tacotron-style model (4 + 4 layers, 512 wide, bf16:
  a text encoder, a decoder emitting 4 mel frames a step with its stop flag read back every
  step) and a HiFi-GAN-style vocoder (fp16), sentence by sentence. The trace has
  ``text_chars``, ``voice`` (four, each its own pace) and ``speed``. Hidden: how the text
  splits into sentences (at most 200 characters each), the utterance's own pace (lognormal,
  log-sd 0.12) and the 1% of sentences whose attention fails to stop before the decoder's
  500-step cap. The vocoder's lengths vary with every request, so cuDNN's autotuner is off
  for this workload, as a server serving such shapes leaves it.
* ``llm_serving``: the LLM decoder above serving many requests at once (continuous batching,
  48 KV-cache slots): every step decodes one token for all running requests, a new request's
  prompt is prefilled as it is admitted, holding the others up meanwhile. Requests arrive at
  random (Poisson) at a rate that swings between 0.2 and 1.8 times ``--serving-rate`` (25 a
  second; the H200 served about 50 a second with all slots busy) over 40 s, with the LLM
  workload's prompt, cap, hidden output length and aborts. A request's runtime runs from its
  admission to its last token; the trace has ``input_tokens``, ``max_tokens`` and
  ``running``, the requests already running when it was admitted (what a scheduler placing
  it knows of the instance's load). Masked attention is kept off cuDNN here: it would build
  kernels for every step's shape.

cuDNN's autotuner is on for every other workload (it is switched on before the first runs; when the
first three files were made it was switched on by the vision workload, which ran first), and
PyTorch 2.11 runs the LLM decoder and the encoder partly
through cuDNN on that GPU (attention, most likely). Their
timings show it: on the H200, 992 of the encoder's 1,088 batches had a (batch, padded
length) not seen before and took about 50 ms whatever their size, against 3-15 ms for a
repeat; the decoder's requests with prompts over 1,200 tokens took a median of 1.6 s
among its first 160 requests and 0.14 s after them. That is the first-run effect of real
serving at another scale, and the files are kept as measured.

Run on the GPU machine from the repository root::

    python3 benchmarks/collect_gpu_traces.py --out DIR [--vision-seconds 100 ...]

A workload given 0 seconds is skipped.

The H200 files in ``examples/data`` come from two such runs (the encoder's from the first,
made with an earlier version of this script whose encoder code was this one);
``h200_collection.json`` beside them gives the machine, the versions and the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # not a dependency of the service: installed on the GPU machine only
    sys.exit("collect_gpu_traces.py needs PyTorch (and torchvision) with CUDA, on a GPU machine: "
             "pip install torch torchvision there, then run it again (see the docstring)")


class TraceWriter:
    """One JSON line per request, flushed at once so that a crash loses nothing measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._file = path.open("w")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


DEVICE, DTYPE = "cuda", torch.bfloat16


def _weights(seed: int) -> Callable[..., torch.Tensor]:
    """A maker of random bf16 weights on the GPU (scale 0.02), seeded, for the models below:
    a forward pass costs the same whatever they hold."""
    torch.manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=DEVICE, dtype=DTYPE) * 0.02

    return w


class _Attention:
    """Multi-head attention's reshaping and layer norm, shared by the models below."""

    heads: int
    head_dim: int
    width: int

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.width)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.width,))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention of ``q`` over ``k``, ``v``, all (batch, tokens, width)."""
        return self._merge(F.scaled_dot_product_attention(*map(self._heads, (q, k, v))))

    def _cross(self, x: torch.Tensor, blocks: list[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder block's cross-attention keys and values of the encoded ``x``, split into heads."""
        return [tuple(map(self._heads, F.linear(x, b["xkv"]).chunk(2, dim=-1))) for b in blocks]

    def _encode(self, x: torch.Tensor, blocks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        for b in blocks:
            q, k, v = F.linear(self._norm(x), b["qkv"]).chunk(3, dim=-1)
            x = x + F.linear(self._attend(q, k, v), b["out"])
            x = x + F.linear(F.gelu(F.linear(self._norm(x), b["up"])), b["down"])
        return self._norm(x)

    def _decode(self, x: torch.Tensor, pos: int, blocks: list[dict[str, torch.Tensor]],
                cross: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One position through decoder blocks with a KV cache (``self.k``, ``self.v``) and cross-attention."""
        for i, b in enumerate(blocks):
            q, k, v = map(self._heads, F.linear(self._norm(x), b["qkv"]).chunk(3, dim=-1))
            self.k[i, :, :, pos:pos + 1], self.v[i, :, :, pos:pos + 1] = k, v
            a = F.scaled_dot_product_attention(q, self.k[i, :, :, :pos + 1], self.v[i, :, :, :pos + 1])
            x = x + F.linear(self._merge(a), b["out"])
            a = F.scaled_dot_product_attention(self._heads(F.linear(self._norm(x), b["xq"])), *cross[i])
            x = x + F.linear(self._merge(a), b["xout"])
            x = x + F.linear(F.gelu(F.linear(self._norm(x), b["up"])), b["down"])
        return self._norm(x)


def _timed(fn) -> float:
    """Wall-clock milliseconds of ``fn()``, which must end with the GPU idle (it reads results back)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


# ----------------------------------------------------------------------------- vision


def collect_vision(writer: TraceWriter, seconds: float, seed: int) -> None:
    import torchvision

    model = torchvision.models.resnet50(weights=None).cuda().half().eval().to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda", dtype=torch.half).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda", dtype=torch.half).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    batches = np.array([1, 2, 4, 8, 16, 32, 64])
    sides = np.array([128, 224, 256, 320, 384, 512])
    # Decoded images as a server would hold them: uint8 HWC in pinned memory.
    pinned = torch.randint(0, 256, (64 * 512 * 512 * 3,), dtype=torch.uint8).pin_memory()

    def request(batch: int, side: int) -> torch.Tensor:
        images = pinned[: batch * side * side * 3].view(batch, side, side, 3)
        with torch.inference_mode():
            x = images.cuda(non_blocking=True).permute(0, 3, 1, 2).half().div_(255).sub_(mean).div_(std)
            return model(x).argmax(-1).cpu()

    request(1, 64)  # CUDA context, cuDNN and cuBLAS handles: a server pays this at start, not per request
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        batch, side = int(rng.choice(batches)), int(rng.choice(sides))
        ts = time.time()
        ms = _timed(lambda: request(batch, side))
        writer.write({"workload": "vision", "seq": seq, "ts": ts, "batch_size": batch, "image_size": side,
                      "runtime_ms": ms})
        seq += 1


# ------------------------------------------------------------------------------- LLM


class Decoder:
    """A pre-norm decoder with learned positions and a static KV cache; random bf16 weights."""

    def __init__(self, layers: int = 6, width: int = 2048, heads: int = 16, ffn: int = 5632,
                 vocab: int = 32000, max_len: int = 4096) -> None:
        w = _weights(0)
        self.heads, self.head_dim, self.width, self.vocab = heads, width // heads, width, vocab
        self.embed, self.pos, self.head = w(vocab, width), w(max_len, width), w(vocab, width)
        self.norm = torch.ones(width, device=DEVICE, dtype=DTYPE)
        self.blocks = [
            {"qkv": w(3 * width, width), "out": w(width, width), "up": w(2 * ffn, width), "down": w(width, ffn),
             "n1": torch.ones(width, device=DEVICE, dtype=DTYPE), "n2": torch.ones(width, device=DEVICE, dtype=DTYPE)}
            for _ in range(layers)
        ]
        self.k = torch.zeros(layers, 1, heads, max_len, self.head_dim, device=DEVICE, dtype=DTYPE)
        self.v = torch.zeros_like(self.k)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.width,), weight, 1e-6)

    def forward(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits of the last position; ``ids`` (1, T) sit at positions start..start+T-1."""
        t = ids.shape[1]
        x = self.embed[ids] + self.pos[start:start + t]
        for i, b in enumerate(self.blocks):
            q, k, v = F.linear(self._rms(x, b["n1"]), b["qkv"]).view(1, t, 3, self.heads, self.head_dim).unbind(2)
            self.k[i, :, :, start:start + t] = k.transpose(1, 2)
            self.v[i, :, :, start:start + t] = v.transpose(1, 2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[i, :, :, :start + t],
                                               self.v[i, :, :, :start + t], is_causal=t > 1)
            x = x + F.linear(a.transpose(1, 2).reshape(1, t, self.width), b["out"])
            gate, up = F.linear(self._rms(x, b["n2"]), b["up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, b["down"])
        return F.linear(self._rms(x[:, -1:], self.norm), self.head)

    @torch.inference_mode()
    def generate(self, prompt_tokens: int, new_tokens: int) -> list[int]:
        ids = torch.randint(0, self.vocab, (1, prompt_tokens), device="cuda")
        token = self.forward(ids, 0).argmax(-1)
        out = [int(token.item())]  # streamed to the client: one read-back per token
        for step in range(1, new_tokens):
            token = self.forward(token, prompt_tokens + step - 1).argmax(-1)
            out.append(int(token.item()))
        return out


def collect_llm(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = Decoder()
    rng = np.random.default_rng(seed)
    model.generate(16, 4)
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        prompt = int(np.clip(round(math.exp(rng.normal(math.log(400), 0.9))), 8, 3000))
        cap = int(rng.choice([64, 128, 256, 512], p=[0.2, 0.3, 0.3, 0.2]))
        produced = min(cap, max(1, round(math.exp(rng.normal(math.log(50), 0.9)))))
        if rng.random() < 0.03:
            produced = int(rng.integers(1, 9))
        ts = time.time()
        ms = _timed(lambda: model.generate(prompt, produced))
        writer.write({"workload": "llm", "seq": seq, "ts": ts, "input_tokens": prompt, "max_tokens": cap,
                      "runtime_ms": ms})
        seq += 1


# --------------------------------------------------------------------------- encoder


class Encoder:
    """A BERT-base-sized encoder (post-norm, GELU) with a padding mask; random bf16 weights."""

    def __init__(self, layers: int = 12, width: int = 768, heads: int = 12, ffn: int = 3072,
                 vocab: int = 30522, max_len: int = 512) -> None:
        w = _weights(1)
        self.heads, self.head_dim, self.width, self.vocab = heads, width // heads, width, vocab
        self.embed, self.pos = w(vocab, width), w(max_len, width)
        self.blocks = [{"qkv": w(3 * width, width), "out": w(width, width), "up": w(ffn, width),
                        "down": w(width, ffn)} for _ in range(layers)]

    @torch.inference_mode()
    def embed_batch(self, lengths: np.ndarray) -> torch.Tensor:
        n, t = len(lengths), int(lengths.max())
        ids = torch.randint(0, self.vocab, (n, t), device="cuda")
        keep = torch.arange(t, device="cuda")[None, :] < torch.as_tensor(lengths, device="cuda")[:, None]
        mask = keep[:, None, None, :]
        x = self.embed[ids] + self.pos[:t]
        for b in self.blocks:
            q, k, v = F.linear(x, b["qkv"]).view(n, t, 3, self.heads, self.head_dim).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask)
            x = F.layer_norm(x + F.linear(a.transpose(1, 2).reshape(n, t, self.width), b["out"]), (self.width,))
            x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, b["up"])), b["down"]), (self.width,))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
        return pooled.float().cpu()


def collect_encoder(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = Encoder()
    rng = np.random.default_rng(seed)
    model.embed_batch(np.array([8]))
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        batch = int(rng.integers(1, 65))
        lengths = np.clip(np.round(np.exp(rng.normal(math.log(60), 0.8, batch))), 4, 512).astype(int)
        ts = time.time()
        ms = _timed(lambda: model.embed_batch(lengths))
        writer.write({"workload": "embedding", "seq": seq, "ts": ts, "batch_size": batch,
                      "seq_len": int(lengths.max()), "tokens": int(lengths.sum()), "runtime_ms": ms})
        seq += 1


# ------------------------------------------------------------------ text-to-image


class DiffusionTransformer(_Attention):
    """A DiT-style latent denoiser (self- and cross-attention, bf16) and a convolutional VAE decoder (fp16).

    Random weights; the latents are 8x smaller than the image and patched 2x2, so a 1024x1024
    image is 4,096 tokens per step.
    """

    def __init__(self, layers: int = 12, width: int = 768, heads: int = 12, ffn: int = 3072,
                 text_tokens: int = 77, max_steps: int = 64) -> None:
        w = _weights(2)
        self.heads, self.head_dim, self.width, self.text_tokens = heads, width // heads, width, text_tokens
        self.patch_in, self.patch_out, self.time = w(width, 16), w(16, width), w(max_steps, width)
        self.blocks = [{"qkv": w(3 * width, width), "out": w(width, width), "xq": w(width, width),
                        "xkv": w(2 * width, width), "xout": w(width, width), "up": w(ffn, width),
                        "down": w(width, ffn)} for _ in range(layers)]
        nn = torch.nn
        self.vae = nn.Sequential(
            nn.Conv2d(4, 256, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(256, 256, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(256, 128, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2.0, mode="nearest"),
            nn.Conv2d(128, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 3, 3, padding=1),
        ).cuda().half().eval().to(memory_format=torch.channels_last)

    def _denoise(self, x: torch.Tensor, text: torch.Tensor, step: int) -> torch.Tensor:
        n, _, lh, lw = x.shape
        t = (lh // 2) * (lw // 2)
        h = x.view(n, 4, lh // 2, 2, lw // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, t, 16).to(torch.bfloat16)
        h = F.linear(h, self.patch_in) + self.time[step]
        for b in self.blocks:
            q, k, v = F.linear(self._norm(h), b["qkv"]).chunk(3, dim=-1)
            h = h + F.linear(self._attend(q, k, v), b["out"])
            xk, xv = F.linear(text, b["xkv"]).chunk(2, dim=-1)
            h = h + F.linear(self._attend(F.linear(self._norm(h), b["xq"]), xk, xv), b["xout"])
            h = h + F.linear(F.gelu(F.linear(self._norm(h), b["up"])), b["down"])
        eps = F.linear(h, self.patch_out).float()
        return eps.view(n, lh // 2, lw // 2, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, 4, lh, lw)

    @torch.inference_mode()
    def generate(self, images: int, height: int, width: int, steps: int, guidance_scale: float) -> torch.Tensor:
        guidance = guidance_scale > 1  # at 1, classifier-free guidance is the conditional pass alone
        latents = torch.randn(images, 4, height // 8, width // 8, device="cuda")
        rows = 2 * images if guidance else images  # classifier-free guidance: a conditional and an unconditional pass
        text = torch.randn(rows, self.text_tokens, self.width, device="cuda", dtype=torch.bfloat16)
        for step in range(steps):
            eps = self._denoise(torch.cat([latents, latents]) if guidance else latents, text, step)
            if guidance:
                cond, uncond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
            latents = latents - eps / steps
        image = self.vae(latents.half().contiguous(memory_format=torch.channels_last))
        return image.clamp(-1, 1).add(1).mul(127.5).to(torch.uint8).cpu()


def collect_diffusion(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = DiffusionTransformer()
    rng = np.random.default_rng(seed)
    sizes = [(512, 512), (768, 768), (1024, 1024), (768, 512), (512, 768), (1024, 576), (576, 1024)]
    size_p = [0.25, 0.2, 0.2, 0.1, 0.1, 0.075, 0.075]
    model.generate(1, 256, 256, 2, 7.5)
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        height, width = sizes[rng.choice(len(sizes), p=size_p)]
        steps = int(rng.choice([10, 20, 25, 30, 50], p=[0.1, 0.3, 0.25, 0.2, 0.15]))
        images = int(rng.choice([1, 2, 4], p=[0.6, 0.25, 0.15]))
        guidance = float(rng.choice([1.0, 3.5, 5.0, 7.5], p=[0.15, 0.2, 0.25, 0.4]))
        ts = time.time()
        ms = _timed(lambda: model.generate(images, height, width, steps, guidance))
        writer.write({"workload": "t2img", "seq": seq, "ts": ts, "height": height, "width": width,
                      "steps": steps, "num_images": images, "guidance_scale": guidance, "runtime_ms": ms})
        seq += 1


# ------------------------------------------------------------------------ speech


class SpeechRecognizer(_Attention):
    """A Whisper-base-sized encoder-decoder (bf16): 30-second windows of log-mel frames, greedy decoding."""

    def __init__(self, encoder_layers: int = 6, decoder_layers: int = 6, width: int = 512, heads: int = 8,
                 ffn: int = 2048, vocab: int = 51865, mels: int = 80, max_tokens: int = 448) -> None:
        w = _weights(3)
        self.heads, self.head_dim, self.width, self.vocab, self.mels = heads, width // heads, width, vocab, mels
        self.max_tokens = max_tokens
        self.conv1, self.conv2 = w(width, mels, 3), w(width, width, 3)
        self.enc_pos, self.dec_pos, self.embed = w(1500, width), w(max_tokens, width), w(vocab, width)
        self.encoder = [{"qkv": w(3 * width, width), "out": w(width, width), "up": w(ffn, width),
                         "down": w(width, ffn)} for _ in range(encoder_layers)]
        self.decoder = [{"qkv": w(3 * width, width), "out": w(width, width), "xq": w(width, width),
                         "xkv": w(2 * width, width), "xout": w(width, width), "up": w(ffn, width),
                         "down": w(width, ffn)} for _ in range(decoder_layers)]
        self.k = torch.zeros(decoder_layers, 1, heads, max_tokens, self.head_dim, device=DEVICE, dtype=DTYPE)
        self.v = torch.zeros_like(self.k)

    def encode(self, mel: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The decoder layers' cross-attention keys and values for one window."""
        x = F.gelu(F.conv1d(mel, self.conv1, padding=1))
        x = F.gelu(F.conv1d(x, self.conv2, stride=2, padding=1)).transpose(1, 2) + self.enc_pos
        x = self._encode(x, self.encoder)
        return self._cross(x, self.decoder)

    def step(self, token: torch.Tensor, pos: int, cross: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        x = self._decode(self.embed[token] + self.dec_pos[pos], pos, self.decoder, cross)
        return F.linear(x, self.embed).argmax(-1)

    @torch.inference_mode()
    def transcribe(self, tokens_per_window: list[int]) -> list[int]:
        """Windows one after another, as long-form transcription conditions each on the last."""
        out: list[int] = []
        for tokens in tokens_per_window:
            cross = self.encode(torch.randn(1, self.mels, 3000, device="cuda", dtype=torch.bfloat16))
            token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
            for pos in range(min(tokens, self.max_tokens)):
                token = self.step(token, pos, cross)
                out.append(int(token.item()))  # streamed: one read-back per token
        return out


# Whisper's byte-level tokenizer spends more tokens per second of speech on some languages.
SPEECH_TOKENS_PER_SECOND = {"en": 3.0, "es": 3.4, "de": 3.6, "zh": 4.8, "ja": 5.6}


def collect_speech(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = SpeechRecognizer()
    rng = np.random.default_rng(seed)
    languages = list(SPEECH_TOKENS_PER_SECOND)
    model.transcribe([4])
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        audio = float(np.clip(math.exp(rng.normal(math.log(20), 1.0)), 1.0, 600.0))
        language = languages[rng.choice(len(languages), p=[0.45, 0.15, 0.1, 0.2, 0.1])]
        # Hidden from the trace, as from a scheduler: how much of the audio is speech, how fast
        # the speaker talks, and the windows that fall into Whisper's repetition loop (to the cap).
        speech = rng.beta(5, 1.5)
        rate = SPEECH_TOKENS_PER_SECOND[language] * math.exp(rng.normal(0, 0.25))
        windows = math.ceil(audio / 30)
        lengths = [min(30.0, audio - 30 * i) for i in range(windows)]
        tokens = [3 + round(rate * speech * s) if rng.random() > 0.01 else model.max_tokens for s in lengths]
        ts = time.time()
        ms = _timed(lambda: model.transcribe(tokens))
        writer.write({"workload": "asr", "seq": seq, "ts": ts, "audio_seconds": round(audio, 2),
                      "language": language, "runtime_ms": ms})
        seq += 1


# --------------------------------------------------------------------------- OCR


class DocumentReader:
    """Text detection on whole pages (ResNet-18 trunk, fp16) and CRNN line recognition (conv + BiLSTM)."""

    LINE_WIDTHS = (128, 256, 384, 512, 768, 1024)  # recognition buckets, in pixels at a 32-pixel line height
    LINE_BATCH = 32

    def __init__(self) -> None:
        import torchvision

        torch.manual_seed(4)
        nn = torch.nn
        trunk = torchvision.models.resnet18(weights=None)
        self.detector = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1,
                                      trunk.layer2, trunk.layer3, nn.Conv2d(256, 1, 1))
        self.detector = self.detector.cuda().half().eval().to(memory_format=torch.channels_last)
        self.lines = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d((2, 1)),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 1)),
        ).cuda().half().eval()
        self.rnn = nn.LSTM(256, 256, num_layers=2, bidirectional=True, batch_first=True).cuda().half().eval()
        self.classes = nn.Linear(512, 97).cuda().half().eval()
        # Decoded pages as a server holds them: uint8 grey, letter size at up to 300 dpi.
        self.pinned = torch.randint(0, 256, (16 * 3300 * 2560,), dtype=torch.uint8).pin_memory()

    @torch.inference_mode()
    def read(self, pages: int, dpi: int, line_widths: np.ndarray) -> int:
        height, width = round(11 * dpi), round(8.5 * dpi)
        batch = 1 << (pages - 1).bit_length()  # pages padded to a power of two, as a server buckets them
        grey = self.pinned[: batch * height * width].view(batch, 1, height, width).cuda(non_blocking=True)
        scale = min(1.0, 2560 / height)  # detection at a long side of at most 2,560 pixels
        size = (int(height * scale) // 32 * 32, int(width * scale) // 32 * 32)
        x = F.interpolate(grey.half().div_(255), size=size, mode="bilinear", align_corners=False)
        found = int((self.detector(x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last))
                     > 0).sum().item())
        crops = torch.rand(self.LINE_BATCH, 1, 32, max(self.LINE_WIDTHS), device="cuda", dtype=torch.half)
        for bucket in self.LINE_WIDTHS:
            n = int(np.count_nonzero(line_widths == bucket))
            for _ in range(math.ceil(n / self.LINE_BATCH)):
                feats = self.lines(crops[..., :bucket]).squeeze(2).transpose(1, 2).contiguous()
                found += int(self.classes(self.rnn(feats)[0]).argmax(-1).ne(0).sum().item())
        return found


def collect_ocr(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = DocumentReader()
    rng = np.random.default_rng(seed)
    widths = np.array(DocumentReader.LINE_WIDTHS)
    model.read(1, 150, widths[:1])
    deadline = time.monotonic() + seconds
    seq = 0
    while time.monotonic() < deadline:
        pages = int(rng.choice([1, 2, 3, 4, 6, 8, 12, 16], p=[0.45, 0.15, 0.1, 0.1, 0.06, 0.06, 0.05, 0.03]))
        dpi = int(rng.choice([150, 200, 300], p=[0.3, 0.4, 0.3]))
        # Hidden: what is on the pages. Blank pages, forms, prose and dense tables have few
        # to many lines of text; the file's size follows the ink, loosely.
        kind = rng.choice(4, size=pages, p=[0.08, 0.3, 0.5, 0.12])
        lines = rng.poisson(np.array([1.0, 15.0, 40.0, 80.0])[kind])
        chars = np.clip(rng.lognormal(math.log(45), 0.5, int(lines.sum())), 2, 120)
        line_widths = widths[np.minimum(np.searchsorted(widths, chars * 8.5), len(widths) - 1)]
        file_kb = float(np.sum((25 + 1.6 * lines) * (dpi / 200) ** 2 * rng.lognormal(0, 0.3, pages)))
        ts = time.time()
        ms = _timed(lambda: model.read(pages, dpi, line_widths))
        writer.write({"workload": "ocr", "seq": seq, "ts": ts, "pages": pages, "dpi": dpi,
                      "file_kb": round(file_kb, 1), "runtime_ms": ms})
        seq += 1


# ---------------------------------------------------------------- text-to-speech


class SpeechSynthesizer(_Attention):
    """A Tacotron-style text-to-speech model (bf16) and a HiFi-GAN-style vocoder (fp16).

    Each sentence: a text encoder, then an autoregressive decoder that attends to the text
    and emits 4 mel frames a step, its stop flag read back every step, then the vocoder
    (256 audio samples a frame).
    """

    def __init__(self, layers: int = 4, width: int = 512, heads: int = 8, ffn: int = 2048, vocab: int = 256,
                 mels: int = 80, frames: int = 4, max_steps: int = 500, max_chars: int = 256) -> None:
        w = _weights(5)
        self.heads, self.head_dim, self.width, self.vocab = heads, width // heads, width, vocab
        self.mels, self.frames, self.max_steps = mels, frames, max_steps
        self.embed, self.text_pos, self.dec_pos = w(vocab, width), w(max_chars, width), w(max_steps, width)
        self.prenet, self.mel_out, self.stop = w(width, mels * frames), w(mels * frames, width), w(1, width)
        self.encoder = [{"qkv": w(3 * width, width), "out": w(width, width), "up": w(ffn, width),
                         "down": w(width, ffn)} for _ in range(layers)]
        self.decoder = [{"qkv": w(3 * width, width), "out": w(width, width), "xq": w(width, width),
                         "xkv": w(2 * width, width), "xout": w(width, width), "up": w(ffn, width),
                         "down": w(width, ffn)} for _ in range(layers)]
        self.k = torch.zeros(layers, 1, heads, max_steps, self.head_dim, device=DEVICE, dtype=DTYPE)
        self.v = torch.zeros_like(self.k)
        nn = torch.nn
        self.vocoder = nn.Sequential(
            nn.Conv1d(mels, 256, 7, padding=3), nn.LeakyReLU(0.1),
            nn.ConvTranspose1d(256, 128, 16, stride=8, padding=4), nn.LeakyReLU(0.1),
            nn.ConvTranspose1d(128, 64, 16, stride=8, padding=4), nn.LeakyReLU(0.1),
            nn.ConvTranspose1d(64, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv1d(16, 1, 7, padding=3), nn.Tanh(),
        ).cuda().half().eval()

    @torch.inference_mode()
    def synthesize(self, sentences: list[int], steps: list[int]) -> list[torch.Tensor]:
        """Sentences of the given characters in turn, each decoded for its number of steps."""
        audio = []
        for chars, n in zip(sentences, steps, strict=True):
            ids = torch.randint(0, self.vocab, (1, chars), device="cuda")
            text = self._encode(self.embed[ids] + self.text_pos[:chars], self.encoder)
            cross = self._cross(text, self.decoder)
            frame = torch.zeros(1, 1, self.mels * self.frames, device="cuda", dtype=torch.bfloat16)
            out = []
            for step in range(min(n, self.max_steps)):
                h = self._decode(F.linear(frame, self.prenet) + self.dec_pos[step], step, self.decoder, cross)
                frame = F.linear(h, self.mel_out)
                out.append(frame)
                float(F.linear(h, self.stop).item())  # the stop flag, read back as a server must
            mel = torch.cat(out, 1).reshape(1, len(out) * self.frames, self.mels).transpose(1, 2)
            audio.append(self.vocoder(mel.half()).float().cpu())
        return audio


# Decoder steps (4 mel frames each) per character of text at speed 1, by voice.
TTS_STEPS_PER_CHAR = {"alloy": 1.35, "breeze": 1.5, "cedar": 1.6, "dune": 1.75}


def collect_tts(writer: TraceWriter, seconds: float, seed: int) -> None:
    model = SpeechSynthesizer()
    rng = np.random.default_rng(seed)
    voices = list(TTS_STEPS_PER_CHAR)
    # Variable-length convolutions: a new length would be a new shape for the autotuner, which
    # a server serving such shapes leaves off.
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        model.synthesize([12], [8])
        deadline = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < deadline:
            chars = int(np.clip(round(math.exp(rng.normal(math.log(150), 0.8))), 10, 2000))
            voice = voices[rng.choice(len(voices), p=[0.4, 0.3, 0.2, 0.1])]
            speed = float(rng.choice([0.8, 1.0, 1.2], p=[0.15, 0.7, 0.15]))
            # Hidden: how the text splits into sentences (each encoded and decoded on its own),
            # the utterance's own pace, and the sentences whose attention fails to stop before
            # the decoder's cap of 500 steps (a known failure of such models, here 1 in 100).
            sentences: list[int] = []
            while sum(sentences) < chars:
                sentences.append(int(min(chars - sum(sentences), np.clip(rng.lognormal(math.log(80), 0.5), 5, 200))))
            pace = math.exp(rng.normal(0, 0.12))
            steps = [model.max_steps if rng.random() < 0.01
                     else max(1, round(c * TTS_STEPS_PER_CHAR[voice] * pace / speed)) for c in sentences]
            ts = time.time()
            ms = _timed(lambda: model.synthesize(sentences, steps))
            writer.write({"workload": "tts", "seq": seq, "ts": ts, "text_chars": chars, "voice": voice,
                          "speed": speed, "runtime_ms": ms})
            seq += 1
    finally:
        torch.backends.cudnn.benchmark = autotune


# -------------------------------------------------------------- LLM, batched serving


class BatchedDecoder:
    """The LLM decoder serving many requests at once (continuous batching).

    Each running request holds a slot of the KV cache; every step decodes one token for all
    of them together, and a newly admitted request's prompt is prefilled on its own first,
    which holds up the others meanwhile.
    """

    def __init__(self, slots: int = 48, max_len: int = 2048) -> None:
        self.m = Decoder(max_len=max_len)
        m = self.m
        m.k = m.v = None  # the one-request cache: this one has a slot per request instead
        self.k = torch.zeros(len(m.blocks), slots, m.heads, max_len, m.head_dim, device="cuda", dtype=torch.bfloat16)
        self.v = torch.zeros_like(self.k)
        self.slots = slots

    @torch.inference_mode()
    def prefill(self, slot: int, prompt: int) -> int:
        m = self.m
        ids = torch.randint(0, m.vocab, (1, prompt), device="cuda")
        x = m.embed[ids] + m.pos[:prompt]
        for i, b in enumerate(m.blocks):
            q, k, v = (t.transpose(1, 2) for t in
                       F.linear(m._rms(x, b["n1"]), b["qkv"]).view(1, prompt, 3, m.heads, m.head_dim).unbind(2))
            self.k[i, slot, :, :prompt], self.v[i, slot, :, :prompt] = k[0], v[0]
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.linear(a.transpose(1, 2).reshape(1, prompt, m.width), b["out"])
            gate, up = F.linear(m._rms(x, b["n2"]), b["up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, b["down"])
        return int(F.linear(m._rms(x[:, -1:], m.norm), m.head).argmax(-1).item())  # the first token, streamed

    @torch.inference_mode()
    def step(self, slots: list[int], positions: list[int], tokens: list[int]) -> list[int]:
        """The next token of every running request; request r's last token sits at ``positions[r]``."""
        m = self.m
        n, length = len(slots), max(positions) + 1
        s = torch.tensor(slots, device="cuda")
        p = torch.tensor(positions, device="cuda")
        x = m.embed[torch.tensor(tokens, device="cuda")][:, None] + m.pos[p][:, None]
        mask = (torch.arange(length, device="cuda")[None, :] <= p[:, None])[:, None, None, :]
        for i, b in enumerate(m.blocks):
            q, k, v = F.linear(m._rms(x, b["n1"]), b["qkv"]).view(n, 1, 3, m.heads, m.head_dim).unbind(2)
            self.k[i, s, :, p], self.v[i, s, :, p] = k[:, 0], v[:, 0]
            a = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[i, s, :, :length], self.v[i, s, :, :length],
                                               attn_mask=mask)
            x = x + F.linear(a.transpose(1, 2).reshape(n, 1, m.width), b["out"])
            gate, up = F.linear(m._rms(x, b["n2"]), b["up"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, b["down"])
        return F.linear(m._rms(x, m.norm), m.head).argmax(-1)[:, 0].tolist()  # streamed: one read-back a step


def collect_llm_serving(writer: TraceWriter, seconds: float, seed: int, rate: float = 25.0) -> None:
    # PyTorch may run masked attention through cuDNN, which builds its kernels per shape, and
    # every step here has a shape of its own (running requests, longest context).
    cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        _serve(BatchedDecoder(), writer, seconds, np.random.default_rng(seed), rate)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)


def _serve(server: BatchedDecoder, writer: TraceWriter, seconds: float, rng: np.random.Generator,
           mean_rate: float) -> None:
    """Requests arrive at a rate that swings between 0.2 and 1.8 times ``mean_rate`` a second over 40 s;
    each one's runtime is from its admission (the end of its wait for a free slot) to its last token."""
    first = server.prefill(0, 16)
    server.step([0], [16], [first])
    free = list(range(server.slots))
    running: dict[int, dict] = {}
    pending: list[dict] = []
    start = time.monotonic()
    deadline = start + seconds
    arrival = start
    seq = 0
    while True:
        now = time.monotonic()
        while arrival <= now and arrival < deadline:
            prompt = int(np.clip(round(math.exp(rng.normal(math.log(400), 0.9))), 8, 1500))
            cap = int(rng.choice([64, 128, 256, 512], p=[0.2, 0.3, 0.3, 0.2]))
            produced = min(cap, max(1, round(math.exp(rng.normal(math.log(50), 0.9)))))
            if rng.random() < 0.03:
                produced = int(rng.integers(1, 9))  # aborted by the client
            pending.append({"prompt": prompt, "cap": cap, "produced": produced})
            rate = mean_rate * (1 + 0.8 * math.sin(2 * math.pi * (arrival - start) / 40))
            arrival += rng.exponential(1 / rate)
        if now >= deadline and not running:
            return  # requests still waiting then are dropped: none of them started
        while pending and free and now < deadline:
            req, slot = pending.pop(0), free.pop()
            req.update(slot=slot, started=time.monotonic(), ts=time.time(), running=len(running))
            req["token"] = server.prefill(slot, req["prompt"])
            req["pos"], req["left"], req["finished"] = req["prompt"], req["produced"] - 1, time.monotonic()
            running[slot] = req
        done = [r for r in running.values() if r["left"] == 0]
        if running.keys() - {r["slot"] for r in done}:
            live = [r for r in running.values() if r["left"] > 0]
            tokens = server.step([r["slot"] for r in live], [r["pos"] for r in live], [r["token"] for r in live])
            stepped = time.monotonic()
            for r, token in zip(live, tokens, strict=True):
                r["token"], r["pos"], r["left"], r["finished"] = token, r["pos"] + 1, r["left"] - 1, stepped
                if r["left"] == 0:
                    done.append(r)
        elif not running and not pending:
            time.sleep(max(0.0, min(arrival, deadline) - time.monotonic()))
        for r in done:
            writer.write({"workload": "llm_serving", "seq": seq, "ts": r["ts"], "input_tokens": r["prompt"],
                          "max_tokens": r["cap"], "running": r["running"],
                          "runtime_ms": (r["finished"] - r["started"]) * 1e3})
            seq += 1
            del running[r["slot"]]
            free.append(r["slot"])


# ------------------------------------------------------------------------------ main

WORKLOADS = {"resnet50_vision": collect_vision, "llm_decode": collect_llm, "text_encoder": collect_encoder,
             "t2img_diffusion": collect_diffusion, "asr_speech": collect_speech, "ocr_document": collect_ocr,
             "tts_speech": collect_tts, "llm_serving": collect_llm_serving}


def _gpu_tag(name: str) -> str:
    """'NVIDIA H200' -> 'h200': the file-name prefix."""
    words = [w for w in name.lower().replace("nvidia", "").split() if w]
    return words[0] if words else "gpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vision-seconds", type=float, default=100)
    ap.add_argument("--llm-seconds", type=float, default=150)
    ap.add_argument("--encoder-seconds", type=float, default=60)
    ap.add_argument("--diffusion-seconds", type=float, default=90)
    ap.add_argument("--speech-seconds", type=float, default=90)
    ap.add_argument("--ocr-seconds", type=float, default=70)
    ap.add_argument("--tts-seconds", type=float, default=80)
    ap.add_argument("--serving-seconds", type=float, default=100)
    ap.add_argument("--serving-rate", type=float, default=25.0,
                    help="llm_serving's mean arrival rate, requests a second (its capacity on an H200: about 50)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # per-shape kernel choice, as a tuned server runs
    gpu = torch.cuda.get_device_name(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        driver = None
    meta = {"gpu": gpu, "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "args": {k: str(v) for k, v in vars(args).items()}, "workloads": {}}
    budgets = {"resnet50_vision": args.vision_seconds, "llm_decode": args.llm_seconds,
               "text_encoder": args.encoder_seconds, "t2img_diffusion": args.diffusion_seconds,
               "asr_speech": args.speech_seconds, "ocr_document": args.ocr_seconds,
               "tts_speech": args.tts_seconds, "llm_serving": args.serving_seconds}
    failed = 0
    options = {"llm_serving": {"rate": args.serving_rate}}
    for offset, (name, collect) in enumerate(WORKLOADS.items()):
        if budgets[name] <= 0:
            continue
        writer = TraceWriter(args.out / f"{_gpu_tag(gpu)}_{name}.jsonl")
        started = time.monotonic()
        error = None
        try:
            collect(writer, budgets[name], args.seed + offset, **options.get(name, {}))
        except Exception:  # one workload's failure must not cost the others' device time
            error = traceback.format_exc()
            failed += 1
            print(error, file=sys.stderr)
        finally:
            writer.close()
            torch.cuda.empty_cache()
        meta["workloads"][name] = {"file": writer.path.name, "rows": writer.rows,
                                   "seconds": round(time.monotonic() - started, 1), "error": error}
        print(f"{name}: {writer.rows} traces in {time.monotonic() - started:.0f} s", flush=True)
        (args.out / "collection.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
