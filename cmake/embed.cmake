# Writes file IN as a C byte array NAME (NUL-terminated) into header OUT.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} */\nstatic const unsigned char ${NAME}[] = {${bytes}0x00};\n")
