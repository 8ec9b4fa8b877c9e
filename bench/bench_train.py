"""Whole training steps of the Table 8 networks: ours against SpikingJelly and against our own
network run through the plain PyTorch reference ops, all in one run on one device.

    python bench/bench_train.py [--device cuda] [--nets mnist cifar10] [--batches 128 512]
                                [--precisions fp32 bf16]
                                [--providers alif_cuda reference spikingjelly spikingjelly+accelerate]
                                [--check-steps 300] [--save-as train]

Defaults depend on the device: on a GPU both nets, batches 128 and 512, fp32 and bf16, 10 reps; on
a CPU (a run of a few minutes) the MNIST net at batch 16 (the paper's), fp32, 3 reps.

A step is forward, rate-MSE loss, backward and the Adam update (T=8). Providers:
  alif_cuda     models.classifiers.SpikingClassifier (static first conv+BN, fused ALIF)
  reference     the same network under alif_cuda.use_reference_ops() (alif_ref's eager loop)
  spikingjelly  the same architecture from SpikingJelly 2.0 layers with ParametricLIFNode at
                PLIF's init, the neuron our default models (init_tau 2, v_threshold 1, decay_input,
                ATan, detached reset to 0, multi-step, its default backend), the static first
                conv+BN computed once as PLIF's code does (when importable)
  spikingjelly+accelerate  that SpikingJelly network after alif_cuda.spikingjelly.accelerate(net),
                the one line that puts its nodes on our fused op
Reports the median step time (CUDA events after warm-up), images/s and peak memory. With
--check-steps it first trains each provider's MNIST network on a fixed synthetic task for that
many steps and fails unless the loss falls, so speed is never bought with a broken model.
Writes bench/results/<save-as>_<device>.json and .md (default train_<device>).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ from the checkout

import alif_cuda  # noqa: E402
from common import command_line, device_name, markdown_table, peak_extra_mb, time_ms, write_results  # noqa: E402
from models.classifiers import build_classifier, rate_mse_loss  # noqa: E402
from models.train_classifier import HelpFormatter  # noqa: E402

T = 8
PROVIDERS = ("alif_cuda", "reference", "spikingjelly", "spikingjelly+accelerate")
SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}


# SpikingJelly's ParametricLIFNode at the two operating points of models.classifiers.NEURON_PRESETS:
# "plif" is PLIF's own init (the same neuron as our default), "paper" the paper's text values.
SJ_NEURONS = {
    "plif": dict(init_tau=2.0, v_threshold=1.0, decay_input=True),
    "paper": dict(init_tau=1 / 0.75, v_threshold=0.2, decay_input=False),
}


def spikingjelly_net(net: str, neuron: str = "plif"):
    """The Table 8 network from SpikingJelly layers (ParametricLIFNode, ATan, detached hard reset
    to 0, multi-step), or None when SpikingJelly is missing."""
    try:
        from spikingjelly.activation_based import functional, layer, neuron as sj_neuron, surrogate
    except ImportError:
        return None

    def node():
        return sj_neuron.ParametricLIFNode(v_reset=0.0, detach_reset=True, surrogate_function=surrogate.ATan(),
                                           step_mode="m", **SJ_NEURONS[neuron])

    c_in, c = (1, 128) if net == "mnist" else (3, 256)
    convs_per_stage = [1, 1] if net == "mnist" else [3, 3]
    body = [node()]
    for stage, convs in enumerate(convs_per_stage):
        for _ in range(convs if stage else convs - 1):
            body += [layer.Conv2d(c, c, 3, padding=1, bias=False), layer.BatchNorm2d(c), node()]
        body.append(layer.MaxPool2d(2, 2))
    side = SHAPES[net][1] // 4
    body += [layer.Flatten(), layer.Dropout(0.5), layer.Linear(c * side * side, 2048, bias=False), node(),
             layer.Dropout(0.5), layer.Linear(2048, 100, bias=False), node()]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(c_in, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c))
            self.body = torch.nn.Sequential(*body)
            functional.set_step_mode(self.body, "m")

        def forward(self, images):
            out = self.body(self.stem(images).unsqueeze(0).repeat(T, 1, 1, 1, 1))
            functional.reset_net(self)
            return out.mean(0).unflatten(-1, (10, 10)).mean(-1)

    return Net()


def build(provider: str, net: str):
    if provider == "spikingjelly":
        return spikingjelly_net(net)
    if provider == "spikingjelly+accelerate":
        from alif_cuda.spikingjelly import accelerate

        model = spikingjelly_net(net)
        accelerate(model)
        return model
    return build_classifier(net)


def make_step(model, optimizer, images, labels, amp_dtype, device, reference):
    def step():
        with alif_cuda.use_reference_ops(reference):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                rates = model(images)
            loss = rate_mse_loss(rates.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss

    return step


def check_learning(provider, device, steps):
    """Trains on a fixed synthetic task (the label is a bright quadrant of the image)."""
    torch.manual_seed(0)
    model = build(provider, "mnist").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    labels = torch.arange(64, device=device) % 10
    images = torch.rand(64, 1, 28, 28, device=device) * 0.2
    for i, y in enumerate(labels.tolist()):
        r, c = divmod(y, 4)
        images[i, 0, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 1.0
    step = make_step(model, optimizer, images, labels, None, device, provider == "reference")
    first = step().item()
    for _ in range(steps - 1):
        last = step().item()
    if not last < 0.8 * first:
        raise SystemExit(f"{provider}: the loss did not fall over {steps} steps ({first:.4f} -> {last:.4f})")
    return first, last


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--nets", nargs="+", choices=tuple(SHAPES), default=None,
                        help="networks (default: mnist cifar10 on a GPU, mnist on a CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="batch sizes (default: 128 512 on a GPU, 16 on a CPU)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                        help="autocast precisions (default: fp32 bf16 on a GPU, fp32 on a CPU)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="implementations to time")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed steps per case (default: 10 on a GPU, 3 on a CPU)")
    parser.add_argument("--check-steps", type=int, default=0, help="first check that each provider learns (e.g. 300)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results files")
    parser.add_argument("--save-as", default="train", help="results file name before _<device>")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    for name, on_gpu, on_cpu in (("nets", ["mnist", "cifar10"], ["mnist"]), ("batches", [128, 512], [16]),
                                 ("precisions", ["fp32", "bf16"], ["fp32"]), ("reps", 10, 3)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")
    if device.type == "cpu" and "bf16" in args.precisions:
        parser.error("bf16 autocast needs a GPU here (the CPU kernels run float32); use --precisions fp32")
    providers = [p for p in args.providers if not p.startswith("spikingjelly") or spikingjelly_net("mnist") is not None]
    if len(providers) < len(args.providers):
        print("spikingjelly is not installed: skipping its providers", file=sys.stderr)

    print(f"Table 8 training steps on {device_name(device)}, torch {torch.__version__}, T={T}\n", flush=True)
    if args.check_steps:
        for provider in providers:
            first, last = check_learning(provider, device, args.check_steps)
            print(f"  {provider}: loss {first:.4f} -> {last:.4f} over {args.check_steps} steps", flush=True)
    records, rows = [], []
    for net in args.nets:
        c, size = SHAPES[net]
        for batch in args.batches:
            for precision in args.precisions:
                amp_dtype = torch.bfloat16 if precision == "bf16" else None
                for provider in providers:
                    torch.manual_seed(0)
                    model = build(provider, net).to(device)
                    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                    images = torch.randn(batch, c, size, size, device=device)
                    labels = torch.randint(0, 10, (batch,), device=device)
                    step = make_step(model, optimizer, images, labels, amp_dtype, device, provider == "reference")
                    try:
                        ms = time_ms(step, device, reps=args.reps, warmup=3)
                        peak = peak_extra_mb(step, device)
                    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
                        print(f"  {provider} {net} batch {batch} {precision}: failed ({str(e).splitlines()[0]})")
                        continue
                    rec = dict(provider=provider, net=net, batch=batch, precision=precision, ms=round(ms, 3),
                               images_per_s=round(batch / (ms * 1e-3), 1),
                               peak_mb=None if peak is None else round(peak, 1), device=device_name(device),
                               torch=torch.__version__)
                    records.append(rec)
                    rows.append([net, batch, precision, provider, f"{ms:.2f}", f"{rec['images_per_s']:.0f}",
                                 "-" if peak is None else f"{peak:.0f}"])
                    print(f"  {net:8s} batch {batch:<4} {precision} {provider:23s} {ms:9.2f} ms "
                          f"{rec['images_per_s']:9.0f} img/s", flush=True)
                    del model, optimizer
    table = markdown_table(["net", "batch", "precision", "provider", "ms/step", "images/s", "peak MB"], rows)
    print("\n" + table)
    if not args.no_save and records:
        path = write_results(args.save_as, device, records, table, command_line(__file__))
        print(f"\nwrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
