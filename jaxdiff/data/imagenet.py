"""The ImageNet subsets of the dataset-distillation papers: ten ImageNet-1k classes each.

The class lists are the `Config` lists of MTT's `utils.py` (github.com/GeorgeCazenavette/
mtt-distillation, commit 50dccea47ba48b9cfb3b9c59375d7da92e4e603b, `class Config`), copied
unchanged by FreD (`TM/utils.py`, commit 9f35a7a) and DDiF (`TM/utils.py`, commit b628e7b, where
the keys are nette/woof/fruits/yellow/cats/birds). Each entry is an ImageNet-1k class *index*
(torchvision's `ImageNet`: the sorted WordNet ids, the same order as TFDS `imagenet2012`'s
labels); the subset's label c is the position of its index in the list (the references remap
`targets` with `class_map = {x: i for i, x in enumerate(list)}`), so the order matters and is
not sorted. jaxdiff selects the classes by WordNet id (`wnids`, the indices looked up in TFDS's
`imagenet2012` label list), which also maps TFDS `imagenette` (labels = sorted wnids) onto the
same label order. The readable names are the references' comments (ImageNette: fast.ai's).
"""

from __future__ import annotations

from typing import NamedTuple


class Subset(NamedTuple):
    """One subset: `indices` (ImageNet-1k class indices, the references' list), `wnids` (the
    same classes as WordNet ids) and `names` (readable), all in label order."""

    indices: tuple[int, ...]
    wnids: tuple[str, ...]
    names: tuple[str, ...]


SUBSETS: dict[str, Subset] = {
    "imagenette": Subset(
        (0, 217, 482, 491, 497, 566, 569, 571, 574, 701),
        ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
         "n03417042", "n03425413", "n03445777", "n03888257"),
        ("tench", "english_springer", "cassette_player", "chain_saw", "church", "french_horn",
         "garbage_truck", "gas_pump", "golf_ball", "parachute")),
    "imagewoof": Subset(
        (193, 182, 258, 162, 155, 167, 159, 273, 207, 229),
        ("n02096294", "n02093754", "n02111889", "n02088364", "n02086240", "n02089973",
         "n02087394", "n02115641", "n02099601", "n02105641"),
        ("australian_terrier", "border_terrier", "samoyed", "beagle", "shih-tzu",
         "english_foxhound", "rhodesian_ridgeback", "dingo", "golden_retriever",
         "english_sheepdog")),
    "imagefruit": Subset(
        (953, 954, 949, 950, 951, 957, 952, 945, 943, 948),
        ("n07753275", "n07753592", "n07745940", "n07747607", "n07749582", "n07768694",
         "n07753113", "n07720875", "n07718472", "n07742313"),
        ("pineapple", "banana", "strawberry", "orange", "lemon", "pomegranate", "fig",
         "bell_pepper", "cucumber", "green_apple")),
    "imageyellow": Subset(
        (309, 986, 954, 951, 987, 779, 599, 291, 72, 11),
        ("n02206856", "n12057211", "n07753592", "n07749582", "n12144580", "n04146614",
         "n03530642", "n02129165", "n01773157", "n01531178"),
        ("bee", "ladys_slipper", "banana", "lemon", "corn", "school_bus", "honeycomb", "lion",
         "garden_spider", "goldfinch")),
    "imagemeow": Subset(
        (281, 282, 283, 284, 285, 291, 292, 290, 289, 287),
        ("n02123045", "n02123159", "n02123394", "n02123597", "n02124075", "n02129165",
         "n02129604", "n02128925", "n02128757", "n02127052"),
        ("tabby_cat", "bengal_cat", "persian_cat", "siamese_cat", "egyptian_cat", "lion",
         "tiger", "jaguar", "snow_leopard", "lynx")),
    "imagesquawk": Subset(
        (84, 130, 88, 144, 145, 22, 96, 9, 100, 89),
        ("n01806143", "n02007558", "n01818515", "n02051845", "n02056570", "n01614925",
         "n01843383", "n01518878", "n01860187", "n01819313"),
        ("peacock", "flamingo", "macaw", "pelican", "king_penguin", "bald_eagle", "toucan",
         "ostrich", "black_swan", "cockatoo")),
}

# TFDS `imagenette` builder configs, in the order jaxdiff looks for them (full-size photos
# first: the 320/160 px variants are already downscaled, so their 128 px images differ).
IMAGENETTE_CONFIGS = ("full-size-v2", "full-size", "320px-v2", "320px", "160px-v2", "160px")

IMAGENET_HINT = (
    "prepare TFDS imagenet2012 (ImageNet-1k needs a manual download: put ILSVRC2012_img_train.tar "
    "and ILSVRC2012_img_val.tar in MANUAL_DIR, then on a machine with TensorFlow `pip install "
    "tensorflow tensorflow-datasets && tfds build imagenet2012 --manual_dir MANUAL_DIR "
    "--data_dir DIR --file_format=array_record`), copy DIR here, then pass data_dir=DIR or set "
    "JAXDIFF_DATA_DIR=DIR. Only the subset's ten classes are decoded, once, into jaxdiff's cache; "
    "for ImageNette alone the smaller TFDS `imagenette` works too (dataset imagenette_tfds)")
IMAGENETTE_HINT = (
    "prepare TFDS imagenette on a machine with TensorFlow (`pip install tensorflow "
    "tensorflow-datasets && tfds build imagenette/full-size-v2 --data_dir DIR "
    "--file_format=array_record`), copy DIR here, then pass data_dir=DIR or set "
    "JAXDIFF_DATA_DIR=DIR")
TINY_HINT = (
    "build it from the official zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) with "
    "`python -m jaxdiff.data.tiny_imagenet tiny-imagenet-200.zip --out DIR` (no TensorFlow "
    "needed), then pass data_dir=DIR or set JAXDIFF_DATA_DIR=DIR")
