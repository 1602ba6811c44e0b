"""A whole run: which processes start (pipeline), `rtcore launch`'s supervisor + load + report
(launcher, report), and the load benchmark (loadbench). On top of everything else.
"""
