"""PyTorch doing what `vitrine bench train` and `vitrine bench embed` time, for a side-by-side.

The model and step are vitrine's default recipe (config.toml; src/model/embedder.rs,
src/train/step.rs, src/commands/bench.rs):
  torchvision ResNet (no fc) → global average pool → dropout 0.1 (training only)
  → Linear(features, 512) → BatchNorm1d(512) (the BNNeck) → L2 normalisation;
  offline triplet loss on the batch [anchors; positives; negatives] (3·B images),
  mean(relu(d(a,p) − d(a,n) + 0.5)) with d the Euclidean distance (squared distance
  floored at 1e-12 before the root); AdamW lr 1e-4, betas (0.9, 0.999), eps 1e-8,
  decoupled weight decay 1e-4 on tensors of rank > 1 only; no gradient clipping;
  every stage trainable; inputs N(0, 1) images; one warm-up step, then --steps timed.

Precisions: fp32 (TF32 off everywhere: the same arithmetic as vitrine), tf32 (PyTorch's
own default on a GPU: TF32 for convolutions), bf16 (autocast for forward and loss).

  python benches/peers/torch_triplet_step.py --backbone resnet50 --image-size 224 --batch 32
  python benches/peers/torch_triplet_step.py --device cpu --backbone resnet18 --image-size 32 --batch 2 --steps 1

Each result is one line like vitrine's ("torch bench train (fp32): resnet50 at 224 px,
batch 32, 5 on cuda: 123.45 triplets/s"), or one JSON object per line with --json.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class Embedder(nn.Module):
    def __init__(self, backbone: str, dim: int, dropout: float):
        super().__init__()
        self.net = getattr(torchvision.models, backbone)(weights=None)
        features = self.net.fc.in_features
        self.net.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, dim)
        self.neck = nn.BatchNorm1d(dim)

    def forward(self, x):
        return F.normalize(self.neck(self.head(self.dropout(self.net(x)))), dim=1, eps=1e-6)


def offline_triplet_loss(emb, margin):
    b = emb.shape[0] // 3
    a, p, n = emb[:b], emb[b : 2 * b], emb[2 * b :]

    def dist(x, y):
        return ((x - y) ** 2).sum(dim=1).clamp_min(1e-12).sqrt()

    return F.relu(dist(a, p) - dist(a, n) + margin).mean()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, steps, fn):
    fn()  # warm-up (cuDNN picks its algorithms here)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t


def bench(args, precision):
    device = torch.device(args.device)
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.manual_seed(0)
    model = Embedder(args.backbone, args.embedding_dim, args.dropout).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(3 * args.batch, 3, args.image_size, args.image_size, device=device).to(memory_format=fmt)

    def train_step():
        model.train()
        with autocast:
            loss = offline_triplet_loss(model(x).float(), args.margin)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    xe = x[: args.batch]

    @torch.no_grad()
    def embed_step():
        model.eval()
        with autocast:
            model(xe)

    results = []
    for what, fn, unit in [("train", train_step, "triplets_per_s"), ("embed", embed_step, "images_per_s")]:
        secs = timed(device, args.steps, fn)
        rate = args.steps * args.batch / secs
        r = {
            "peer": "torch",
            "bench": what,
            "precision": precision,
            "backbone": args.backbone,
            "image_size": args.image_size,
            "batch": args.batch,
            "steps": args.steps,
            "device": str(device),
            unit: rate,
        }
        if what == "train":
            r["images_per_s"] = 3 * rate
        if device.type == "cuda":
            r["device_name"] = torch.cuda.get_device_name(device)
            r["max_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        results.append(r)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32, help="triplets per step (train), images per batch (embed)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32,tf32,bf16", help="comma-separated: fp32, tf32, bf16")
    ap.add_argument("--embedding-dim", type=int, default=512)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--channels-last", action="store_true", help="NHWC tensors (PyTorch's fast layout)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for precision in args.precision.split(","):
        if precision not in ("fp32", "tf32", "bf16"):
            ap.error(f"unknown precision {precision!r}: expected fp32, tf32 or bf16")
        for r in bench(args, precision):
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                unit = "triplets_per_s" if r["bench"] == "train" else "images_per_s"
                extra = f" ({r['images_per_s']:.1f} images/s)" if r["bench"] == "train" else ""
                print(
                    f"torch bench {r['bench']} ({precision}): {r['backbone']} at {r['image_size']} px, "
                    f"batch {r['batch']}, {r['steps']} on {r['device']}: {r[unit]:.2f} "
                    f"{unit.replace('_per_s', '/s')}{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
