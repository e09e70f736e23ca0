"""From per-example records to what a paper takes: the run's report (:mod:`.report`: checks, cost, the files of a
finished run), its tables (:mod:`.summary`), figures (:mod:`.plots`), paired comparisons with McNemar's test
(:mod:`.paired`), RobustBench entries (:mod:`.robustbench`) and the one verdict per model (:mod:`.verdicts`).
Reads the records; imports the attack layer's checks and nothing that runs an attack."""
