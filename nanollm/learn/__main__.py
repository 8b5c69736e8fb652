"""python -m nanollm.learn --list | N: list the lessons, or run lesson N (1-based). A bad number is one error line."""
import sys

from ..tokenizer import TokenizerError
from . import LESSONS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in ([], ["--list"], ["-h"], ["--help"]):
        print("python -m nanollm.learn N runs lesson N. The lessons follow a prompt through inference:")
        for number, lesson in enumerate(LESSONS, start=1):
            print(f"{number:3d}  {lesson.title}: {lesson.shows}")
        return 0
    if len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= len(LESSONS):
        print(f"error: {' '.join(args)!r} is not a lesson: give a number from 1 to {len(LESSONS)}, or --list",
              file=sys.stderr)
        return 2
    number = int(args[0])
    lesson = LESSONS[number - 1]
    print(f"Lesson {number} of {len(LESSONS)}: {lesson.title}")
    try:
        lesson.run()
    except (TokenizerError, OSError) as e:  # a folder named by NANOLLM_GPT2_DIR that holds no tokenizer, ...
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\n{lesson.read_next_line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
