"""Zoos: a base model, per-task fine-tunes and adapters, test data; the demo zoo ships in assets/zoo."""
from peru_core.zoo.manifest import DataRef, TaskSpec, Zoo, demo_zoo, load_zoo, parse_manifest

__all__ = ["DataRef", "TaskSpec", "Zoo", "demo_zoo", "load_zoo", "parse_manifest"]
