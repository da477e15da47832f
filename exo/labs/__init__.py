"""The coursework kit: labs cut from the reference sources, and their grader (docs/labs/).

``catalog`` lists the labs; the solution regions are marked in the sources themselves
(``# LAB N BEGIN id: what to do`` ... ``# LAB N END``, cut by ``regions``); ``tree`` finds them in a
project tree and writes a lab's student tree, ``cmd_lab`` is ``python -m exo lab list/new``,
``stubs`` explains a stub a student ran into in one line; ``plugin`` is the pytest plugin the graded
tests (``exo/labs/tests/labN/``) use. How labs are made: docs/labs/README.md.
"""
