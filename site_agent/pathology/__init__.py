"""Whole-slide histopathology at a site: slides, QuPath annotations, tissue detection, patches,
patient-level splits, synthetic slides, local training and the federated "pathology" task."""

CLASSES: tuple[str, ...] = ("Tumor", "Stroma", "Normal ducts", "Immune cells", "Adipose", "Necrosis", "Complex",
                            "Background")
