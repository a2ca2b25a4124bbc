import { describe, expect, test } from "bun:test";
import { parseRequest, parseTarget } from "../src/target.ts";

describe("parseTarget()", () => {
  test("parses a machine name, service and command", () => {
    expect(parseTarget("web1.example.org:pgo//ps")).toEqual({ machine: "web1.example.org", service: "pgo", command: "ps" });
  });

  test("parses an IPv4 machine", () => {
    expect(parseTarget("192.0.2.1:caddy//exec")).toEqual({ machine: "192.0.2.1", service: "caddy", command: "exec" });
  });

  test("parses a bracketed IPv6 machine and returns it without brackets", () => {
    expect(parseTarget("[::1]:pgo//up")).toEqual({ machine: "::1", service: "pgo", command: "up" });
    expect(parseTarget("[2001:db8::5]:a-b_c//logs")).toEqual({ machine: "2001:db8::5", service: "a-b_c", command: "logs" });
    expect(parseTarget("[fe80::1%eth0]:pgo//ping").machine).toBe("fe80::1%eth0");
  });

  test("rejects an IPv6 machine without brackets and says to use them", () => {
    expect(() => parseTarget("::1:pgo//ps")).toThrow(/missing machine/);
    expect(() => parseTarget("fe80::1:pgo//ps")).toThrow(/must be in brackets/);
  });

  const bad: [string, RegExp][] = [
    ["", /expected "machine:service\/\/command"/],
    ["pgo//ps", /expected "machine:service\/\/command"/],
    ["host:pgo/ps", /expected "machine:service\/\/command"/],
    ["host:pgo//ps//x", /expected "machine:service\/\/command"/],
    ["host://ps", /missing service/],
    ["host:pgo//", /missing command/],
    [":pgo//ps", /missing machine/],
    ["[::1:pgo//ps", /missing "\]"/],
    ["[::1]pgo//ps", /expected "machine:service\/\/command"/],
    ["[nothex]:pgo//ps", /invalid IPv6 address "nothex"/],
    ["user@host:pgo//ps", /invalid machine "user@host"/],
    ["host:p go//ps", /invalid service "p go"/],
    ["host:pgo//logs -f", /invalid command "logs -f": arguments go after the target/],
  ];
  for (const [input, want] of bad) {
    test(`rejects ${JSON.stringify(input)} with a clear message`, () => {
      expect(() => parseTarget(input)).toThrow(want);
    });
  }

  test("quotes the whole target in its message", () => {
    expect(() => parseTarget("host:pgo//")).toThrow(`Invalid target "host:pgo//": missing command`);
  });
});

describe("parseRequest()", () => {
  test("splits service, command and args", () => {
    expect(parseRequest("pgo//logs --tail 10")).toEqual({ service: "pgo", command: "logs", args: ["--tail", "10"] });
  });

  test("honours quotes in the args and expands nothing", () => {
    expect(parseRequest(`pgo//exec web sh -c 'ls -l; echo $HOME'`)).toEqual({
      service: "pgo",
      command: "exec",
      args: ["web", "sh", "-c", "ls -l; echo $HOME"],
    });
  });

  test("keeps shell metacharacters in the first word instead of running anything", () => {
    expect(parseRequest("svc//ps; touch /tmp/x")).toEqual({ service: "svc", command: "ps;", args: ["touch", "/tmp/x"] });
  });

  test("rejects an empty request", () => {
    expect(() => parseRequest("  ")).toThrow(`Empty request: expected "service//command [args...]"`);
  });

  test("rejects a first word without exactly one // and non-empty parts", () => {
    for (const s of ["pgo", "pgo/ps", "//ps", "pgo//", "a//b//c", "host:pgo/ps"]) {
      expect(() => parseRequest(s)).toThrow(/Invalid request ".*": expected "service\/\/command \[args\.\.\.\]"/);
    }
  });

  test("rejects unterminated quotes", () => {
    expect(() => parseRequest("pgo//exec 'x")).toThrow("Unterminated single quote at column 11");
  });
});
