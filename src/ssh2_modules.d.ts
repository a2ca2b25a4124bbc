// Types for the two ssh2 files pgoctl loads directly instead of the package's index (which also
// loads its server, SFTP, agents and node:http): see bench/README.md, "pgoctl's start".
declare module "ssh2/lib/client.js" {
  import type { Client } from "ssh2";
  const ClientClass: typeof Client;
  export default ClientClass;
}
declare module "ssh2/lib/protocol/keyParser.js" {
  import type { utils } from "ssh2";
  export const parseKey: typeof utils.parseKey;
}
