import { test } from "bun:test";
import { scenario } from "../e2e/harness.ts";
import { serveOne, sshRequest } from "./util.ts";
test("experiment", async () => {
  await scenario("exp", async (env) => {
    const s = await serveOne(env, "exp", { interval: "10m" });
    await sshRequest(s.port, s.keyText, `${s.name}//ping`);
    const atk = Bun.spawn(["bun", "/tmp/exp/attack.ts", String(s.port)], { stdout: "inherit", stderr: "inherit" });
    const ms: number[] = [];
    for (let i = 0; i < 8; i++) { const a = await sshRequest(s.port, s.keyText, `${s.name}//ping`); ms.push(Math.round(a.ms)); await Bun.sleep(300); }
    await atk.exited;
    console.log("separate-process attack, pings:", ms.join(", "));
  });
}, 120000);
