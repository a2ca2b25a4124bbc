import { describe, expect, test } from "bun:test";
import { answerOf, CommandError, EX, FileError, RequestError, RollbackError } from "../src/errors.ts";

describe("CommandError", () => {
  test("its message keeps the last three lines of stderr that say something, skipping blank ones", () => {
    const stderr = "fatal: '/srv/x.git' does not appear to be a git repository\nfatal: Could not read from remote repository.\n\n" +
      "Please make sure you have the correct access rights\nand the repository exists.\n";
    const e = new CommandError({ argv: ["git", "ls-remote", "--heads", "origin"], cwd: "/", exitCode: 128, stderrTail: stderr, durationMs: 12 });
    expect(e.message).toBe(
      'Command "git ls-remote --heads" failed: exited with status 128: fatal: Could not read from remote repository. | ' +
        "Please make sure you have the correct access rights | and the repository exists.",
    );
  });

  test("says a timeout, a signal or what kept it from starting instead of the exit status", () => {
    expect(new CommandError({ argv: ["docker", "compose", "up"], exitCode: null, timedOut: true, durationMs: 5 }).message)
      .toBe('Command "docker compose up" failed: timed out after 5 ms');
    expect(new CommandError({ argv: ["git"], exitCode: null, signal: "SIGKILL" }).message).toBe('Command "git" failed: killed by SIGKILL');
    expect(new CommandError({ argv: ["nope"], exitCode: null, detail: "could not start: ENOENT" }).message).toBe('Command "nope" failed: could not start: ENOENT');
  });
});

describe("answerOf()", () => {
  test("gives a RequestError its own status, counted by what it says about the request", () => {
    expect(answerOf(new RequestError(EX.noperm, "Permission denied"))).toEqual({ status: 77, result: "denied", internal: false });
    expect(answerOf(new RequestError(EX.usage, "Unknown command"))).toEqual({ status: 64, result: "malformed", internal: false });
    expect(answerOf(new RequestError(EX.unavailable, "Service not ready"))).toEqual({ status: 69, result: "unavailable", internal: false });
    expect(answerOf(new RequestError(EX.tempfail, "Cannot run \"exec\""))).toEqual({ status: 75, result: "unavailable", internal: false });
    expect(answerOf(new RequestError(EX.dataerr, "Bad data"))).toEqual({ status: 65, result: "error", internal: false });
  });

  test("gives a refused rollback the status of its reason", () => {
    expect(answerOf(new RollbackError("unknown commit", "x")).status).toBe(EX.usage);
    expect(answerOf(new RollbackError("nothing earlier", "x")).status).toBe(EX.unavailable);
    expect(answerOf(new RollbackError("unverified", "x")).status).toBe(EX.dataerr);
  });

  test("makes a failing git, a file error or anything else thrown an internal error (70)", () => {
    const git = new CommandError({ argv: ["git", "rev-parse"], exitCode: 128 });
    for (const e of [git, new FileError("/x", "missing", "it does not exist"), new Error("boom"), "a string"]) {
      expect(answerOf(e)).toEqual({ status: EX.software, result: "error", internal: true });
    }
  });
});

describe("FileError", () => {
  test("names the path and what was done, and keeps the reason apart for the caller's message", () => {
    const e = new FileError("a/b", "not a directory", '"a" is a symlink or not a directory', { op: "write", in: "/srv" });
    expect(e.message).toBe('Cannot write "a/b" in "/srv": "a" is a symlink or not a directory');
    expect(e.why).toBe('"a" is a symlink or not a directory');
  });
});
