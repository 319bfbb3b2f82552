"""What the icon benchmark builders share (benches/iconset, benches/crossartist).

Both turn icon artwork into a consumer-to-shop set in the DeepFashion layout: a clean
catalogue shot per item and "consumer photos" of other drawings of the same thing, posed on
clutter and degraded as vitrine's synthetic `consumer_view` (src/data/synth.rs). They differ
only in where the drawings come from and how items are named and categorised.

    package  fetch an npm tarball once, check its pinned sha512
    draw     rasterise an icon's SVG with resvg, place it, compose shop and consumer images
    scene    the photograph around it: clutter, occlusion, light, blur, colours, JPEG
    dataset  categories, splits, rendering in worker processes, the layout's files

Builders import it as `iconlib` after putting benches/ on sys.path (they are run as scripts).
Everything here is deterministic: the same inputs give byte-identical files.
"""
