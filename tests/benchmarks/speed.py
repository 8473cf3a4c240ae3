"""Time this project's training against bare PyTorch loops and the usual DataLoader recipe.

    python tests/benchmarks/speed.py --data-dir /path/to/data            # 5 epochs, 3 repeats
    python tests/benchmarks/speed.py --quick --data-dir tests/tiny_data   # a smoke run

A measurement harness, not a user tool. Each variant runs in a fresh process, in turn, so
that all see the same machine load:
  (a) project: `python train.py` as a user runs it (validation, images, checkpoints, test);
  (b) bare: a loop over the same in-memory tensors with the same network and torch's default
      Adam, as the public PyTorch VAE example has it;
  (e) floor: the bare loop with the fastest settings torch offers for it here (fused Adam);
  (c) recipe: torchvision MNIST + ToTensor + DataLoader, sigmoid + binary_cross_entropy,
      as in the public PyTorch VAE example;
  (d) step_cost, once: Lightning's cost per step, its steps and bare ones taking turns.
Seconds per epoch count training and validation; `wall` is the whole process; `start-up` is
the time from the process's start to its first epoch's end, less one typical epoch. GFLOP/s
count the network's matrix products (training and validation) per second of an epoch.
Results go to `--out` as JSON and Markdown.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE, LR = 128, 1e-3


def mnist_splits(data_dir: str, val_size: int, device: str) -> tuple:
    """Train, val and test images as the project's DataModule reads and splits them, on
    `device`; through `vaelab.datasets`, which needs no Lightning (its import would count in
    the bare loops' start-up)."""
    from vaelab.datasets import MNIST, split_off

    raw_dir = MNIST.raw_dir(data_dir)
    MNIST.verify(raw_dir)
    (images, _), (test, _) = MNIST.load(raw_dir, "train"), MNIST.load(raw_dir, "t10k")
    val, train = split_off(len(images), val_size)
    return tuple(x.to(device) for x in (images[train], images[val], test))


def matmul_flop(train_images: int, val_images: int) -> float:
    """FLOP of an epoch's matrix products in the default network: per image, 2 * inputs *
    outputs per Linear forward, twice that backward (weights' and inputs' gradients), but no
    input gradient for the first layer (the image needs none)."""
    import torch

    from vaelab.module import VAEModule

    layers = [m for m in VAEModule().modules() if isinstance(m, torch.nn.Linear)]
    forward = sum(2 * m.in_features * m.out_features for m in layers)
    first = layers[0]  # the encoder's first layer, which reads the image
    train = 3 * forward - 2 * first.in_features * first.out_features
    return train * train_images + forward * val_images


def bare_loop(data_dir: str, epochs: int, val_size: int, device: str, fused: bool) -> dict:
    """(b) and (e): the same data split, network and loss as the project's default, with
    torch's default Adam (b) or its fused kernel (e)."""
    import torch

    from vaelab.losses import bernoulli_nll, gaussian_kl
    from vaelab.networks import MLPDecoder, MLPEncoder, reparameterize

    torch.manual_seed(0)
    train, val, test = mnist_splits(data_dir, val_size, device)
    encoder = MLPEncoder((1, 28, 28), 20, hidden_sizes=[400]).to(device)
    decoder = MLPDecoder((1, 28, 28), 20, hidden_sizes=[400]).to(device)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=LR, fused=fused or None)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        mean, logvar = encoder(x)
        logits = decoder(reparameterize(mean, logvar))
        return (bernoulli_nll(logits, x) + gaussian_kl(mean, logvar)).mean()

    @torch.no_grad()
    def evaluate(data: torch.Tensor) -> float:
        return sum(loss_of(x).item() * len(x) for x in data.split(1000)) / len(data)

    epoch_seconds, first_epoch_end = [], None
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(train), device=device).split(BATCH_SIZE):
            loss = loss_of(train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        evaluate(val)
        epoch_seconds.append(time.perf_counter() - start)
        first_epoch_end = first_epoch_end or time.time()
    result = {"epoch_seconds": epoch_seconds, "first_epoch_end": first_epoch_end}
    return {**result, "test_loss": evaluate(test), "train_images": len(train)}


def usual_recipe(data_dir: str, epochs: int, val_size: int, device: str) -> dict:
    """(c): the public PyTorch VAE example's data pipeline and loss."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    class VAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc21, self.fc22 = (
                nn.Linear(784, 400),
                nn.Linear(400, 20),
                nn.Linear(400, 20),
            )
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h = F.relu(self.fc1(x.view(-1, 784)))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    torch.manual_seed(0)
    full = datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor())
    split = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
    train_loader = DataLoader(Subset(full, split[val_size:]), batch_size=BATCH_SIZE, shuffle=True)
    val_loader = DataLoader(Subset(full, split[:val_size]), batch_size=1000)
    test_loader = DataLoader(
        datasets.MNIST(data_dir, train=False, transform=transforms.ToTensor()), batch_size=1000
    )
    model = VAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    @torch.no_grad()
    def evaluate(loader: DataLoader) -> float:
        total = 0.0
        for x, _ in loader:
            x = x.to(device)
            recon, mu, logvar = model(x)
            total += loss_function(recon, x, mu, logvar).item()
        return total / len(loader.dataset)

    epoch_seconds, first_epoch_end = [], None
    for _ in range(epochs):
        start, train_loss = time.perf_counter(), 0.0
        model.train()
        for x, _ in train_loader:
            x = x.to(device)
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_function(recon, x, mu, logvar)
            loss.backward()
            train_loss += loss.item()  # as the example does, for its epoch average
            optimizer.step()
        model.eval()
        evaluate(val_loader)
        epoch_seconds.append(time.perf_counter() - start)
        first_epoch_end = first_epoch_end or time.time()
    result = {"epoch_seconds": epoch_seconds, "first_epoch_end": first_epoch_end}
    return {**result, "test_loss": evaluate(test_loader)}


def step_cost(data_dir: str, epochs: int, val_size: int, device: str) -> dict:
    """(d): milliseconds per training step of Lightning's Trainer and of a bare step, taking
    turns in one process, so that both see the same machine load: whole-process times on a
    shared machine swing by more than the difference.

    The Trainer fits the project's VAEModule and MNISTDataModule with no logger, callbacks
    or validation. After each of its steps, a second VAEModule, used as a plain torch
    module, takes one bare step (the same loss and optimizer settings) on random training
    images. Lightning's step is the time from the end of one bare step to the next batch's end.
    """
    import lightning as L
    import torch

    from vaelab.data import MNISTDataModule
    from vaelab.module import VAEModule

    def synchronize() -> None:  # so that each side's time holds all its work
        if device == "cuda":
            torch.cuda.synchronize()

    class TakeTurns(L.Callback):
        def setup(self, trainer: L.Trainer, pl_module: VAEModule, stage: str) -> None:
            self.images = trainer.datamodule.train_images
            self.bare = VAEModule().to(pl_module.device)
            self.optimizer = self.bare.configure_optimizers()
            self.lightning, self.bare_steps, self.mark = [], [], None

        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            synchronize()
            start = time.perf_counter()
            if self.mark is not None:
                self.lightning.append(start - self.mark)
            rows = torch.randint(len(self.images), (BATCH_SIZE,), device=self.images.device)
            recon, kl, _ = self.bare.loss_terms(self.images[rows])
            self.optimizer.zero_grad()
            (recon + kl).mean().backward()
            self.optimizer.step()
            synchronize()
            self.mark = time.perf_counter()
            self.bare_steps.append(self.mark - start)

    turns = TakeTurns()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu" if device == "cpu" else "gpu",
        devices=1,
        callbacks=[turns],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(VAEModule(), datamodule=MNISTDataModule(data_dir, val_size=val_size))
    return {
        "lightning_ms": 1e3 * statistics.median(turns.lightning),
        "bare_ms": 1e3 * statistics.median(turns.bare_steps),
        "steps": len(turns.lightning),
    }


WORKERS = {
    "bare": lambda *args: bare_loop(*args, fused=False),
    "floor": lambda *args: bare_loop(*args, fused=True),
    "recipe": usual_recipe,
    "step_cost": step_cost,
}


PROJECT_VARIANTS = {  # the project's training with extra overrides; the last two on GPUs only
    "project": [],
    "project_compile": ["model.compile=true"],
    "project_bf16": ["trainer.precision=bf16-mixed"],
}


def run(variant: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one variant in a fresh process; return its timings, test loss and peak memory."""
    result_file = work / f"{variant}.json"
    if variant in PROJECT_VARIANTS:
        hardware = "cpu" if args.device == "cpu" else "gpu"
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            f"data.data_dir={args.data_dir}",
            f"data.val_size={args.val_size}",
            f"trainer.max_epochs={args.epochs}",
            f"hardware={hardware}",
            f"hydra.run.dir={work / variant}",
            *PROJECT_VARIANTS[variant],
        ]
    else:
        command = [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--data-dir",
            args.data_dir,
            "--epochs",
            str(args.epochs),
            "--val-size",
            str(args.val_size),
            "--device",
            args.device,
            "--out",
            str(result_file),
        ]
    started, start = time.time(), time.perf_counter()
    status, peak_mib = launch(command, work / f"{variant}.log")
    wall = time.perf_counter() - start
    if status != 0:
        sys.exit(f"{variant} failed; its output is in {work / f'{variant}.log'}")
    if variant in PROJECT_VARIANTS:
        result = _read_project_run(work / variant)
    else:
        result = json.loads(result_file.read_text())
    if "epoch_seconds" in result:  # the time to the first epoch's end, less a typical epoch
        skip = 0 if variant in PROJECT_VARIANTS else 1  # see summarize
        epoch = statistics.median(result["epoch_seconds"][skip:])
        result["startup_seconds"] = result.pop("first_epoch_end") - started - epoch
    return {**result, "wall": wall, "peak_rss_mib": peak_mib}


def launch(command: list[str], log_path: Path) -> tuple[int, float]:
    """Run COMMAND in a fresh process in the checkout, its output into LOG_PATH; return its
    wait status and peak resident memory in MiB."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    return status, usage.ru_maxrss / 1024


def _read_project_run(run_dir: Path) -> dict:
    """Epoch times from the wall clock of each epoch's `train/loss` event; the test loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    ends = [event.wall_time for event in events.Scalars("train/loss")]
    return {
        "epoch_seconds": [b - a for a, b in zip(ends, ends[1:], strict=False)],
        "first_epoch_end": ends[0],
        "test_loss": events.Scalars("test/loss")[-1].value,
    }


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """Medians over repeats; per-epoch figures skip each run's first epoch (warm-up)."""
    rows = {}
    train_images = runs["bare"][0]["train_images"]
    flop = matmul_flop(train_images, args.val_size)
    for variant, results in runs.items():
        # the project's lists already start at the second epoch (differences of epoch ends)
        skip = 0 if variant in PROJECT_VARIANTS else 1
        epoch = statistics.median(s for r in results for s in r["epoch_seconds"][skip:])
        rows[variant] = {
            "seconds_per_epoch": epoch,
            "samples_per_second": train_images / epoch,
            "gflop_per_second": flop / epoch / 1e9,
            "startup_seconds": statistics.median(r["startup_seconds"] for r in results),
            "wall_seconds": statistics.median(r["wall"] for r in results),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
            "test_loss": statistics.median(r["test_loss"] for r in results),
        }
    a, b, c, e = rows["project"], rows["bare"], rows["recipe"], rows["floor"]
    return {
        "machine": f"{platform.node()}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "device": args.device,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "variants": rows,
        "ratios": {
            "project/bare seconds per epoch": a["seconds_per_epoch"] / b["seconds_per_epoch"],
            "project/bare wall": a["wall_seconds"] / b["wall_seconds"],
            "project/floor seconds per epoch": a["seconds_per_epoch"] / e["seconds_per_epoch"],
            "project/floor wall": a["wall_seconds"] / e["wall_seconds"],
            "recipe/project seconds per epoch": c["seconds_per_epoch"] / a["seconds_per_epoch"],
            "project - bare test loss": a["test_loss"] - b["test_loss"],
        },
        "matmul_gflop_per_epoch": flop / 1e9,
        "matmul_mflop_per_training_step": matmul_flop(BATCH_SIZE, 0) / 1e6,
    }


def markdown(summary: dict) -> str:
    lines = [
        f"{summary['epochs']} epochs, {summary['repeats']} repeats, device {summary['device']}; "
        f"{summary['machine']}",
        "",
        "| variant | s/epoch | samples/s | GFLOP/s | start-up s | wall s | peak MiB | test loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["variants"].items():
        lines.append(
            f"| {name} | {r['seconds_per_epoch']:.2f} | {r['samples_per_second']:.0f} | "
            f"{r['gflop_per_second']:.1f} | {r['startup_seconds']:.2f} | {r['wall_seconds']:.1f} | "
            f"{r['peak_rss_mib']:.0f} | {r['test_loss']:.2f} |"
        )
    lines += ["", *(f"- {k}: {v:.3f}" for k, v in summary["ratios"].items())]
    lines.append(
        f"- matrix products: {summary['matmul_mflop_per_training_step']:.0f} MFLOP per training "
        f"step of {BATCH_SIZE}, {summary['matmul_gflop_per_epoch']:.0f} GFLOP per epoch"
    )
    cost = summary["step_cost"]
    lines.append(
        f"- per step, Lightning's and bare steps taking turns ({cost['steps']} each): "
        f"{cost['lightning_ms']:.2f} ms against {cost['bare_ms']:.2f} ms"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA_DIR", "data"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda if present)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "benchmark"))
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 repeat: a smoke run")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    if args.worker:  # inside a child process: run one variant and report
        result = WORKERS[args.worker](args.data_dir, args.epochs, args.val_size, args.device)
        Path(args.out).write_text(json.dumps(result))
        return
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.epochs, args.repeats = 2, 1

    names = ["project", "bare", "floor", "recipe"]
    if args.device == "cuda":
        names += ["project_compile", "project_bf16"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            variants = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate
            for variant in variants:
                work = Path(tmp) / f"{repeat}"
                work.mkdir(exist_ok=True)
                runs[variant].append(run(variant, args, work))
                print(f"repeat {repeat} {variant}: {runs[variant][-1]['wall']:.1f} s", flush=True)
        cost = run("step_cost", args, Path(tmp))
    summary = {**summarize(runs, args), "step_cost": cost}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps({**summary, "runs": runs}, indent=2))
    (out / "benchmark.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
