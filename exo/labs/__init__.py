"""The coursework kit: labs cut from the reference sources, and their grader (docs/labs/).

``catalog`` lists the labs; the solution regions are marked in the sources themselves
(``# LAB N BEGIN id: what to do`` ... ``# LAB N END``); ``plugin`` is the pytest plugin the graded
tests (``exo/labs/tests/labN/``) use.
"""
