"""The GPU check behind scripts/gpu_check.sh: cli.py (the command line and what each stage does),
config.py (the command table, budgets and parts), check.py (a stage's clock and subprocesses),
stages.py (the stages part by part), parse.py (reading the parts' output), targets.py (every target
as one table), evaluate.py (reading the targets off the measurements), report.py (summary.md,
junit.xml, log.txt)."""
