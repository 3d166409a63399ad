-- One of four files that request the "base" fixture at the same moment (-p 4).
require("shared")()
