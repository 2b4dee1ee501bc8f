"""Filesystem layout of the dev stack (all derived from this file's location)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
STACK_DIR: Path = REPO_ROOT / ".stack"
BIN_DIR: Path = STACK_DIR / "bin"
LOG_DIR: Path = STACK_DIR / "logs"
SRC_DIR: Path = STACK_DIR / "src"
KAFKA_DIR: Path = STACK_DIR / "kafka"
KAFKA_LIBS_DIR: Path = KAFKA_DIR / "libs"
KAFKA_POM: Path = Path(__file__).resolve().parent / "kafka" / "pom.xml"
