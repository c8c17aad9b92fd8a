"""Threads for the concurrency tests."""
import threading


def run_workers(worker, count):
    """Run worker(seed) for seeds 0..count-1 on threads; the (seed, error) of those that raised."""
    errors = []

    def guarded(seed):
        try:
            worker(seed)
        except Exception as error:   # reported to the test, with the worker's seed
            errors.append((seed, repr(error)))

    threads = [threading.Thread(target=guarded, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
