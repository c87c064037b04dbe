from flywheel.app import run
from services.monitoring.definition import DEFINITION

if __name__ == "__main__":
    run(DEFINITION)
