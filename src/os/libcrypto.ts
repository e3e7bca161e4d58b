// Owns loading the system's libcrypto (OpenSSL 3) through the project's FFI: the AES-256-GCM and
// HMAC-SHA-256 of an encrypted repository call it directly, into buffers the caller gives.
import { type KoffiLib, koffi } from './koffi.js';

export const libcrypto: KoffiLib = koffi.load('libcrypto.so.3');
