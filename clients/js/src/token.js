// Reading a JWT's `exp` (never verifying it: that is the server's job).

/** When `token` expires, in ms since the epoch, or null if it says nothing. */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp === "number" ? exp * 1000 : null;
  } catch {
    return null;
  }
}
