"""What the entry scripts run: recipe arguments (one dataclass per concern, YAML + command line), and the runner
that tells a distillation's story (load, build, distill, evaluate, save, push) and turns bad input into one line."""
