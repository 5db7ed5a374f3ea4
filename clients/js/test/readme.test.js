// Every ```js snippet of README.md type-checks against src/index.d.ts (as JavaScript with
// checkJs, the way an editor checks a game's code), each as its own module.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import ts from "typescript";

const PACKAGE = join(dirname(fileURLToPath(import.meta.url)), "..");
const README = readFileSync(join(PACKAGE, "README.md"), "utf8");
// Virtual files inside the package, so `@npc-server/client` resolves to the package itself.
const HERE = join(PACKAGE, "test", "readme");
// What the README says stand for the game's own objects, and what snippets share.
const GLOBALS = `
declare const hud: any, scene: any, ui: any, cancelButton: any, game: any;
declare const token: string;
declare const npc: import("@npc-server/client").NpcClient;
`;

export function snippets(markdown) {
  return [...markdown.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
}

function typeErrors(sources) {
  const options = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ["lib.es2022.d.ts", "lib.dom.d.ts"],
    types: [],
    strict: true,
    noImplicitAny: false, // plain JavaScript: unannotated parameters are fine, API misuse is not
    allowJs: true,
    checkJs: true,
    noEmit: true,
  };
  const files = new Map([[join(HERE, "globals.d.ts"), GLOBALS]]);
  sources.forEach((source, i) => files.set(join(HERE, `snippet-${i + 1}.mjs`), `${source}\nexport {};\n`));
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, version, ...rest) =>
    files.has(name) ? ts.createSourceFile(name, files.get(name), version) : getSourceFile.call(host, name, version, ...rest);
  host.fileExists = (name) => files.has(name) || fileExists.call(host, name);
  host.readFile = (name) => files.get(name) ?? readFile.call(host, name);
  const program = ts.createProgram([...files.keys()], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where = d.file ? `${d.file.fileName.slice(HERE.length + 1)}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}` : "";
    return `${where} ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
  });
}

test("the README's js snippets are found", () => {
  const found = snippets(README);
  assert.ok(found.length >= 4, `${found.length} snippets`);
  assert.ok(found.some((s) => s.includes("tools:")), "the tools snippet");
});

test("every js snippet of the README type-checks against the declarations", () => {
  assert.deepEqual(typeErrors(snippets(README)), []);
});

test("the check finds a mistake (so the test above checks something)", () => {
  const errors = typeErrors(['import { connect } from "@npc-server/client";\nconst c = await connect({ url: "u", token });\nc.answerTools("c-1", 1);\n']);
  assert.equal(errors.length, 1, errors.join("\n"));
  assert.match(errors[0], /answerTools/);
});
