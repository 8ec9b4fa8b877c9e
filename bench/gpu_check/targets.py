"""The targets each stage checks: one table, read by evaluate.py, printed in summary.md beside what
was measured.

A row names its stage and id (the key in results.json), the part whose output it reads (source), how
the value is read (measure), the row filter and column of that part's table, the comparison and
threshold (with the unit the summary prints after it) and the wording. {T}, {N}, {plane}, {batch},
{small_N} and {big_batch} in the id, the wording and the filter are the stage's headline sizes
(config.HEADLINE: the GPU run's, or the dry run's tiny ones).

Measures (evaluate.py):
  cell         the number in `column` of the first table row matching the filter
  ratio        that cell over the same column of the row the filter matches once updated with `over`
  field        the source's value `column` (the train stage's final-epoch figures)
  count        how many entries the source's list `column` holds (the kernel report's findings)
  sanitizer    compute-sanitizer's count: `column` from its summary line, else its error count
  tests        the CUDA cases that did not pass (failures, errors, and on the GPU skips for want of
               one); a run that selected no case counts one
  epochs_left  the epochs planned less the epochs done

A target is read once its source part ran (when="ran"), or once it printed a table (when="rows");
each="T" makes one target per T in the table, read at that T's largest N.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One row of the table (the module's docstring says what each field holds)."""

    stage: str
    id: str
    source: str
    measure: str
    rows: dict
    column: str
    compare: str
    threshold: float
    unit: str
    text: str
    over: dict = None
    each: str = ""
    when: str = "ran"

    @property
    def wanted(self):
        """The threshold as the summary prints it: '>= 92%', '<= 0.5x', '== 0 errors'."""
        return f"{self.compare} {self.threshold:g}{self.unit}"


FB = "forward+backward"
ALIF = dict(T="{T}", N="{N}", mode=FB)  # an alif benchmark row at the headline sizes
MNIST = dict(net="mnist", batch="{batch}")  # a training-step row at the headline batch
SJ, OURS = dict(provider="spikingjelly"), dict(provider="alif_cuda")

TARGETS = (
    # verify: the tests, the sanitizers, the kernel report, then the headline benchmarks.
    Target("verify", "cuda_tests", "tests", "tests", None, "", "==", 0, " not passing",
           "every CUDA test case passes, none skipped for want of a GPU"),
    Target("verify", "memcheck", "memcheck", "sanitizer", None, "errors", "==", 0, " errors",
           "compute-sanitizer memcheck reports nothing"),
    Target("verify", "racecheck", "racecheck", "sanitizer", None, "hazards", "==", 0, " hazards",
           "compute-sanitizer racecheck reports nothing"),
    Target("verify", "no_local_in_loops", "kernel_report", "count", None, "local_memory_in_loops", "==", 0,
           " kernels", "no local-memory (spill) instructions inside kernel loops"),
    Target("verify", "alif_fp32_bw", "bench_alif_fp32", "cell", dict(ALIF, **OURS), "of copy", ">=", 92, "%",
           "alif fp32 forward+backward T={T} N={N}: share of copy bandwidth"),
    Target("verify", "alif_static_bw", "bench_alif_fp32", "cell", dict(ALIF, **OURS, mode="static " + FB), "of copy",
           ">=", 85, "%", "alif static-input forward+backward T={T} N={N}: share of copy"),
    Target("verify", "alif_memory", "bench_alif_fp32", "ratio", dict(ALIF, **OURS), "peak MB", "<=", 0.5, "x",
           "alif fp32 extra peak memory against SpikingJelly's", over=SJ),
    Target("verify", "alif_fp32_vs_sj", "bench_alif_fp32", "ratio", dict(ALIF, **SJ), "ms", ">=", 1.4, "x",
           "alif float32 forward+backward speed against SpikingJelly 2.0.0", over=OURS),
    Target("verify", "alif_bf16_vs_sj", "bench_alif_bf16", "ratio", dict(ALIF, **SJ), "ms", ">=", 1.8, "x",
           "alif bfloat16 forward+backward speed against SpikingJelly 2.0.0", over=OURS),
    Target("verify", "taid_fwd_bw", "bench_taid", "cell", dict(plane="{plane}", mode="forward", **OURS), "of copy",
           ">=", 80, "%", "taid forward {plane} fp32: share of copy bandwidth"),
    Target("verify", "taid_fb_vs_compile", "bench_taid", "ratio",
           dict(plane="{plane}", mode=FB, provider="reference+compile"), "ms", ">=", 3, "x",
           "taid forward+backward {plane} against taid_ref under torch.compile", over=OURS),
    Target("verify", "train_fp32_vs_sj", "bench_train", "ratio", dict(MNIST, precision="fp32", **OURS), "images/s",
           ">=", 2.0, "x", "Table 8 MNIST training step B={batch} fp32: images/s against SpikingJelly", over=SJ),
    Target("verify", "train_bf16_vs_sj", "bench_train", "ratio", dict(MNIST, precision="bf16", **OURS), "images/s",
           ">=", 2.5, "x", "Table 8 MNIST training step B={batch} bf16: images/s against SpikingJelly", over=SJ),
    Target("verify", "train_memory", "bench_train", "ratio", dict(MNIST, precision="fp32", **OURS), "peak MB",
           "<=", 0.6, "x", "Table 8 MNIST training step B={batch} fp32: peak memory against SpikingJelly", over=SJ),
    # sweep: bandwidth over T, the small-N call, bf16, the wider training steps, FSVAE.
    Target("sweep", "alif_bw_T{T}", "sweep_alif_fp32", "cell", dict(OURS, mode=FB), "of copy",
           ">=", 90, "%", "alif fp32 forward+backward T={T} N={N}: share of copy bandwidth", each="T"),
    Target("sweep", "alif_small_N_ms", "sweep_alif_fp32", "cell", dict(ALIF, **OURS, N="{small_N}"), "ms",
           "<=", 0.10, " ms", "alif fp32 forward+backward T={T} N={small_N}: one call (median time)"),
    Target("sweep", "alif_bf16_vs_sj", "sweep_alif_bf16", "ratio", dict(ALIF, **SJ), "ms", ">=", 1.8, "x",
           "alif bf16 forward+backward T={T} N={N} against SpikingJelly", over=OURS, when="rows"),
    Target("sweep", "train_cifar10_{batch}_fp32_vs_sj", "sweep_train", "ratio",
           dict(net="cifar10", batch="{batch}", precision="fp32", **OURS), "images/s", ">=", 1.8, "x",
           "Table 8 cifar10 training step B={batch} fp32: images/s against SpikingJelly", over=SJ),
    Target("sweep", "train_mnist_{big_batch}_fp32_vs_sj", "sweep_train", "ratio",
           dict(net="mnist", batch="{big_batch}", precision="fp32", **OURS), "images/s", ">=", 2.0, "x",
           "Table 8 mnist training step B={big_batch} fp32: images/s against SpikingJelly", over=SJ),
    Target("sweep", "train_mnist_{big_batch}_bf16_vs_sj", "sweep_train", "ratio",
           dict(net="mnist", batch="{big_batch}", precision="bf16", **OURS), "images/s", ">=", 2.5, "x",
           "Table 8 mnist training step B={big_batch} bf16: images/s against SpikingJelly", over=SJ),
    Target("sweep", "fsvae_vs_reference", "sweep_fsvae", "ratio", dict(FSVAE="reference"), "ms/step", ">=", 3, "x",
           "FSVAE+TAID training step against the same model on the reference ops", over=dict(FSVAE="alif_cuda")),
    # train: the Table 8 MNIST run.
    Target("train", "mnist_final_acc", "train", "field", None, "final_test_acc", ">=", 99.60, "%",
           "Table 8 MNIST final-epoch test accuracy"),
    Target("train", "train_to_final_epoch", "train", "epochs_left", None, "", "==", 0, " epochs left",
           "the run reaches its final epoch inside the budget"),
    Target("train", "train_minutes", "train", "field", None, "wall_time_s", "<=", 540, " s",
           "training time (train stage on the GPU)"),
)
