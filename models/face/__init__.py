"""Face stack shared by the LivePortrait and Ditto modes.

Data flow: portrait -> `detection` (SCRFD boxes) -> `landmarks106` (InsightFace
106 points) -> `landmarks203` (LivePortrait's refinement) -> `crop` (the
similarity crop at 512 and the 256 network input) ... networks ... ->
`paste_back` (blend the rendered crop into the portrait with a `mask`).
`analysis` strings these together and raises the persona errors.
"""
