import { describe, expect, test } from "bun:test";
import { CommandError } from "../src/errors.ts";

describe("CommandError", () => {
  test("its message keeps the last three lines of stderr that say something, skipping blank ones", () => {
    const stderr = "fatal: '/srv/x.git' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\n" +
      "Please make sure you have the correct access rights\nand the repository exists.\n";
    const e = new CommandError(["git", "ls-remote", "--heads", "origin"], "/", 128, null, false, stderr, 12);
    expect(e.message).toBe(
      'Command "git ls-remote --heads" failed: exited with status 128: fatal: Could not read from remote repository. | ' +
        "Please make sure you have the correct access rights | and the repository exists.",
    );
  });
});
