"""What every training entry point shares, one job per module:

- env: torchrun's processes, the device and its precision, the CPUs, every RNG's state;
- files: atomic, fsynced writes that never follow a link; checkpoints read safely; metrics.jsonl;
- rundir: the run directory's lock, the start / resume / refuse decision, the recipe check;
- cli: the shared options and their checks, the command that resumes a run;
- monitor: firing rates per layer, progress with the run's ETA, images per second;
- loop: fit(), the epochs of a run (train, evaluate, record, save);
- curves: curves.png.

A run directory is consistent whatever moment the process dies: checkpoint.pt is replaced
atomically (temporary file, fsync, rename, fsync of the directory) and holds every metrics record
so far, so --resume rewrites metrics.jsonl from it; metrics.jsonl is appended only after the
checkpoint of its epoch exists. A lock held by the live writer refuses a second one, and the
directory cannot be turned against its user (rundir's docstring says how).

Entry points import from this package; tests that stand in for a function patch it in the module
that calls it (files.fault_point, curves.plot_curves, rundir.acquire_lock)."""
from . import cli, curves, env, files, loop, monitor, rundir
from .cli import RUN_ONLY, SEED_LIMIT, HelpFormatter, add_run_args, command_line, validate_run_args
from .curves import plot_curves
from .env import (AMP_DTYPES, Dist, autocast, check_device_and_amp, cpu_count, device_description, init_distributed,
                  peak_gpu_mb, pick_device, rng_state, seed_everything, set_rng_state)
from .files import (CHECKPOINT, CURVES, METRICS, RUN_FILES, SUMMARY, CheckpointError, DiskFullError, append_metrics,
                    check_output_file, checkpoint_kind, load_checkpoint, read_metrics, require_kind, save_atomic,
                    write_bytes_atomic, write_json_atomic, write_metrics)
from .loop import Job, NonFiniteError, default_spiking_layers, fit, make_loaders
from .monitor import FiringMonitor, FiringRateWarning, Progress, Throughput, firing_warnings, format_duration
from .rundir import (LOCK, LOCK_FILES, LOCK_HOLDER, RunDirError, acquire_lock, plan_run_dir, prepare_run,
                     prepare_run_dir, recipe, recipe_differences, release_lock,
                     remove_stale_temporaries)
