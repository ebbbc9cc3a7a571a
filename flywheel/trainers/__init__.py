"""Training code shipped with Flywheel as worked examples of a team's own trainer.

Each module's ``train(train, validation, spec)`` follows the contract in
docs/custom-trainers.md and is registered as an entry point in group
``flywheel.trainers`` (pyproject.toml), so a spec names it by that name.
"""
