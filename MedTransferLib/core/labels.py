"""Label definitions: value in the label map, name, colour. Stored in every model package."""

from __future__ import annotations

from dataclasses import dataclass

# Distinct, colour-blind-friendlier colours (Okabe–Ito and Tableau hues), used when the
# datalist gives none; Slicer shows segments in these colours.
PALETTE = [
    (0.902, 0.624, 0.0), (0.337, 0.706, 0.914), (0.0, 0.62, 0.451), (0.941, 0.894, 0.259),
    (0.0, 0.447, 0.698), (0.835, 0.369, 0.0), (0.8, 0.475, 0.655), (0.85, 0.1, 0.1),
    (0.122, 0.467, 0.706), (1.0, 0.498, 0.055), (0.173, 0.627, 0.173), (0.839, 0.153, 0.157),
    (0.58, 0.404, 0.741), (0.549, 0.337, 0.294), (0.89, 0.467, 0.761), (0.737, 0.741, 0.133),
]


@dataclass(frozen=True)
class Label:
    value: int          # value in the user's label maps and in predictions
    name: str
    color: tuple[float, float, float]
    # Slicer's terminology entry of the training segment (its "TerminologyEntry" tag, e.g.
    # "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure~…"),
    # carried through training so predicted segments say what they are, not only their name.
    terminology: str = ""

    def to_dict(self) -> dict:
        d = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            d["terminology"] = self.terminology
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Label":
        return cls(int(d["value"]), str(d["name"]), tuple(float(c) for c in d["color"]),
                   str(d.get("terminology") or ""))


def default_color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


__all__ = ["Label", "PALETTE", "default_color"]
