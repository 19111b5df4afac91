"""The network's vetted cohort definitions (ATLAS/Circe JSON), concept sets and study specs,
shipped inside the wheel as package data: :func:`optima_common.definitions.definitions_dir`
finds them from any working folder."""
